"""Export of per-epoch training dynamics in Dataset Cartography's format
(Swayamdipta et al., EMNLP 2020; github.com/allenai/cartography).

Its loader (cartography/selection/selection_utils.py, read_training_dynamics) reads
MODEL_DIR/training_dynamics/, takes the number of epochs from the number of files there, and
reads dynamics_epoch_0.jsonl ... dynamics_epoch_{E-1}.jsonl; each line is one training sample:

    {"guid": 1234, "logits_epoch_3": [..C floats..], "gold": 2}

and it turns logits into probabilities with a softmax. We record probabilities, not logits, so we
write log-probabilities as the logits: softmax(log p) = p, so Cartography's confidence,
variability and correctness come out exactly as ours. `guid` is the sample's global id.

Per run and cycle, from td/epochs/probs_eEEEE.npy (train.record_epoch_probs). Refused, with the
reason, where those records are absent, the epochs are not 0..E-1, or the class count is above the
limit (each line holds C numbers per sample and epoch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tidal_dist.report.datamaps import epoch_files, gold_labels

LOG_FLOOR = 1e-30  # log(0) is not a JSON number; e^-69 is zero for any softmax that reads it


class ExportRefused(Exception):
    """Why a cycle cannot be exported; the report prints it."""


def export_cycle(cycle_dir: Path, model_dir: Path, max_classes: int) -> int:
    """Write model_dir/training_dynamics/dynamics_epoch_E.jsonl for each recorded epoch of the
    cycle; return the number of epochs written."""
    td = cycle_dir / "td"
    files = epoch_files(td)
    if not files:
        raise ExportRefused(f"{cycle_dir}: no per-epoch records (td/epochs/); run with "
                            f"train.record_epoch_probs=true to export them")
    epochs = list(files)
    if epochs != list(range(len(epochs))):
        raise ExportRefused(f"{cycle_dir}: epochs recorded are {epochs}, but Cartography's loader "
                            f"reads epochs 0..E-1 without gaps")
    ids = np.load(td / "ids.npy").astype(np.int64)
    first = np.load(files[0], mmap_mode="r")
    classes = first.shape[1]
    if classes > max_classes:
        raise ExportRefused(f"{cycle_dir}: {classes} classes is above the export limit of "
                            f"{max_classes} (--cartography-max-classes): each line would hold "
                            f"{classes} numbers per sample and epoch")
    gold = gold_labels(cycle_dir, ids).tolist()
    guids = ids.tolist()
    out = model_dir / "training_dynamics"
    out.mkdir(parents=True, exist_ok=True)
    for epoch, path in files.items():
        probs = np.load(path, mmap_mode="r")
        if probs.shape != (len(ids), classes):
            raise ExportRefused(f"{path}: shape {probs.shape}, expected {(len(ids), classes)}")
        logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64), LOG_FLOOR))
        key = f"logits_epoch_{epoch}"
        target = out / f"dynamics_epoch_{epoch}.jsonl"
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for guid, row, g in zip(guids, logp, gold):
                f.write(json.dumps({"guid": guid, key: [round(float(v), 7) for v in row],
                                    "gold": g}, separators=(",", ":")) + "\n")
        os.replace(tmp, target)
    return len(files)


def read_training_dynamics(model_dir: Path) -> dict[int, dict]:
    """Read an export back the way Cartography's loader does: guid -> {"gold", "logits": [per
    epoch]}; the number of epochs is the number of files in training_dynamics/."""
    td_dir = Path(model_dir) / "training_dynamics"
    num_epochs = len([f for f in td_dir.iterdir() if f.is_file()])
    dynamics: dict[int, dict] = {}
    for epoch in range(num_epochs):
        with open(td_dir / f"dynamics_epoch_{epoch}.jsonl", encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                guid = record["guid"]
                if guid not in dynamics:
                    if epoch != 0:
                        raise ValueError(f"guid {guid} first seen in epoch {epoch}")
                    dynamics[guid] = {"gold": record["gold"], "logits": []}
                dynamics[guid]["logits"].append(record[f"logits_epoch_{epoch}"])
    return dynamics
