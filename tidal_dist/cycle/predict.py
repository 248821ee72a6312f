"""`tidal-dist predict RUN_DIR`: a committed cycle's model labels the rest of the pool (or the test
split, or another prepared dataset), sharded over the ranks like scoring.

    tidal-dist predict runs/c10 --out preds.parquet               # the last cycle, unlabeled pool ids
    torchrun --nproc_per_node 4 -m tidal_dist predict runs/c10 --cycle 3 --split test --out p.csv

One row per id, ascending: id, original_key, predicted (class index), predicted_name,
probability (of that class), td_uncertainty (TiDAL's TD-entropy: the entropy of the TD module's
predicted distribution, Kye et al. ICCV 2023; empty without a TD module). `.parquet` (pyarrow)
or anything else as CSV.

Each rank streams its share (training/inference.py) into per-rank part files (cycle/parts.py);
rank 0 merges them into files in id order and writes the output in row blocks, reading the fields
and the original keys (data/manifest.py KeyCursor) block by block, so memory stays flat in the
number of samples apart from a few int64 arrays of ids (the ids to predict, the merge's order and
places: benchmarks/predict_memory.py measures it). The output appears in one rename; nothing in
the run directory is written.
"""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tidal_dist.config import RUN_CONFIG_NAME, load_config
from tidal_dist.cycle.loop import committed_cycles, cycle_dir, load_npz
from tidal_dist.cycle.parts import Field, PartWriter, merge_parts, read_rows
from tidal_dist.cycle.pool import pool_ids
from tidal_dist.data.manifest import KeyCursor, load_manifest
from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import atomic_write
from tidal_dist.models.network import network_from_state
from tidal_dist.strategies.base import entropy_of
from tidal_dist.telemetry.progress import progress
from tidal_dist.training.inference import predict

FIELDS = {"predicted": Field(np.int64), "probability": Field(np.float32),
          "td_uncertainty": Field(np.float32)}
COLUMNS = ["id", "original_key", "predicted", "predicted_name", "probability", "td_uncertainty"]
BLOCK = 65536  # rows per written block


def predictions(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-sample predictions from the network's outputs: class, probability, probs, and the TD
    module's uncertainty where it has one."""
    probs = torch.softmax(out["logits"].float(), dim=1)
    probability, predicted = probs.max(dim=1)
    result = {"predicted": predicted, "probability": probability, "probs": probs}
    if "td_logits" in out:
        result["td_uncertainty"] = entropy_of(out["td_logits"].float())
    return result


def resolve_cycle(run_dir: Path, cycle: int) -> int:
    n = committed_cycles(run_dir)
    if n == 0:
        raise UserError(f"run dir '{run_dir}': no committed cycle yet, so no trained model")
    k = cycle + n if cycle < 0 else cycle
    if not 0 <= k < n:
        raise UserError(f"--cycle {cycle}: run dir '{run_dir}' has cycles 0..{n - 1}")
    return k


def _targets(cfg, run_dir: Path, k: int, split: str, all_ids: bool):
    """(dataset root, split name, ids) to predict."""
    if split == "pool":
        ids, _ = pool_ids(cfg)
        if not all_ids:
            ids = np.setdiff1d(ids, load_npz(cycle_dir(run_dir, k) / "labeled.npz")["ids"])
        return cfg.data.root, "pool", ids
    if split == "test":
        return cfg.data.root, "test", load_manifest(cfg.data.root).split("test").ids()
    source = Path(split)
    if not (source / "manifest.json").is_file():
        raise UserError(f"--split '{split}': expected pool, test, or a folder written by "
                        f"`tidal-dist prepare`")
    other = load_manifest(source)
    mine = load_manifest(cfg.data.root)
    if other.mode != mine.mode:
        raise UserError(f"--split '{split}': its images are {other.mode}, the run's model was "
                        f"trained on {mine.mode} images")
    name = "pool" if "pool" in other.splits else sorted(other.splits)[0]
    return source, name, other.split(name).ids()


def _write(out: Path, merged: dict[str, np.ndarray], manifest, has_td: bool,
           keys: KeyCursor) -> None:
    """`out` in blocks of BLOCK rows: the merged fields are read block by block from their files
    and the original keys streamed from the keys file, so no per-sample column is held whole."""
    names = np.array(manifest.class_names, dtype=object)
    n = len(merged["ids"])
    files = {name: Path(merged[name].filename) for name in FIELDS}

    def columns(lo: int, hi: int) -> dict[str, list]:
        ids = merged["ids"][lo:hi]
        cls = read_rows(files["predicted"], lo, hi)
        td = read_rows(files["td_uncertainty"], lo, hi) if has_td else None
        return {"id": ids, "original_key": keys.keys(ids),
                "predicted": cls, "predicted_name": names[cls],
                "probability": read_rows(files["probability"], lo, hi), "td_uncertainty": td}

    if out.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("id", pa.int64()), ("original_key", pa.string()),
                            ("predicted", pa.int64()), ("predicted_name", pa.string()),
                            ("probability", pa.float32()), ("td_uncertainty", pa.float32())])

        def write_parquet(f) -> None:
            with pq.ParquetWriter(f, schema) as writer:
                for lo in range(0, max(n, 1), BLOCK):
                    c = columns(lo, min(n, lo + BLOCK))
                    if c["td_uncertainty"] is None:
                        c["td_uncertainty"] = pa.nulls(len(c["id"]), pa.float32())
                    writer.write_table(pa.table({k: c[k] for k in COLUMNS}, schema=schema))

        atomic_write(out, write_parquet)
        return

    def write_csv(f) -> None:
        import io

        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        w = csv.writer(text, lineterminator="\n")
        w.writerow(COLUMNS)
        for lo in range(0, n, BLOCK):
            c = columns(lo, min(n, lo + BLOCK))
            td = c["td_uncertainty"]
            w.writerows(zip(c["id"].tolist(), c["original_key"], c["predicted"].tolist(),
                            c["predicted_name"].tolist(), c["probability"].tolist(),
                            td.tolist() if td is not None else [""] * len(c["id"])))
        text.flush()
        text.detach()

    atomic_write(out, write_csv)


def predict_main(run_dir: str | Path, out: str | Path, cycle: int = -1, split: str = "pool",
                 all_ids: bool = False) -> int:
    """Every rank: predict the chosen ids; rank 0 writes `out`. Returns 0."""
    from tidal_dist.training.session import build_session

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / RUN_CONFIG_NAME).is_file():
        raise UserError(f"predict: '{run_dir}' is not a run directory (no {RUN_CONFIG_NAME})")
    if out.is_dir():
        raise UserError(f"--out '{out}' is a folder; give a file name ending in .csv or .parquet")
    cfg = load_config(run_dir / RUN_CONFIG_NAME)
    k = resolve_cycle(run_dir, cycle)
    root, split_name, ids = _targets(cfg, run_dir, k, split, all_ids)
    manifest = load_manifest(cfg.data.root)  # the model's classes and normalisation
    state = torch.load(cycle_dir(run_dir, k) / "model.pt", map_location="cpu", weights_only=True)
    network = network_from_state(cfg.model, manifest.num_classes,
                                 1 if manifest.mode == "L" else 3, state)
    session = build_session(cfg, model=network)
    session.cfg = replace(cfg, data=replace(cfg.data, root=str(root)))
    acc = session.accelerator
    parts = out.parent / f".{out.name}.parts"
    if acc.is_main_process:
        shutil.rmtree(parts, ignore_errors=True)
    acc.wait_for_everyone()
    workers = max(cfg.data.num_workers, 1)
    capacity = math.ceil(len(ids) / (acc.num_processes * workers)) * workers
    writer = PartWriter(parts, "predict", acc.process_index, capacity, FIELDS)
    has_td = network.td_module is not None
    bar = progress(total=len(ids), desc="predicting", unit="samples", enabled=acc.is_main_process)
    for batch_ids, _labels, outputs in predict(session, split_name, cfg.al.score_batch_size,
                                               ids=ids, reuse=False):
        p = predictions(outputs)
        writer.append({"ids": batch_ids.numpy(), "predicted": p["predicted"].cpu().numpy(),
                       "probability": p["probability"].cpu().numpy(),
                       "td_uncertainty": p["td_uncertainty"].cpu().numpy() if has_td
                       else np.zeros(len(batch_ids), dtype=np.float32)})
        bar.update(len(batch_ids) * acc.num_processes)
    bar.close()
    writer.close()
    acc.wait_for_everyone()
    if acc.is_main_process:
        merged = merge_parts(parts, "predict", acc.num_processes, ids, FIELDS,
                             scalars_on_disk=True)
        del ids  # the merged ids replace them
        out.parent.mkdir(parents=True, exist_ok=True)
        data = load_manifest(root) if root != cfg.data.root else manifest
        _write(out, merged, data, has_td, KeyCursor(root, split_name, data))
        count = len(merged["ids"])
        del merged
        shutil.rmtree(parts, ignore_errors=True)
        print(f"tidal-dist predict: {count} predictions of cycle {k}'s model "
              f"({split}) written to {out}", flush=True)
    acc.wait_for_everyone()
    acc.end_training()
    return 0
