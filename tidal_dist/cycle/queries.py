"""What a person labels: a cycle's queries exported with their images (human oracles only).

    queries/cycle_K.csv   one row per query, in pick order:
                          id, shard, key, score, original_key, image, predicted, predicted_name
    queries/cycle_K/      the images, copied byte for byte out of the shards, named
                          `<id>.<ext>` (or `<id>_<original key>.<ext>` when the dataset
                          remembers another name for the sample, e.g. an image folder's path)

`score` is the strategy's reported value; `predicted` / `predicted_name` are the model's class
(empty before any model exists: cycle 0's initial set, queries/initial.csv). The images are
written into `.cycle_K.partial/` and renamed, the CSV is written last: a CSV means a whole export.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tidal_dist.config import DataConfig
from tidal_dist.cycle.oracle import LabelsPending, label_queries, queries_path
from tidal_dist.data.manifest import Manifest, original_keys
from tidal_dist.data.readers import RandomAccessReader
from tidal_dist.data.shards import sample_key
from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import atomic_write_text, fsync_dir

COLUMNS = ["id", "shard", "key", "score", "original_key", "image", "predicted", "predicted_name"]


def image_extension(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        kind = (image.format or "bin").lower()
    return {"jpeg": ".jpg"}.get(kind, f".{kind}")


def image_name(sample_id: int, key: str, extension: str) -> str:
    if key == sample_key(sample_id):
        return f"{sample_id}{extension}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key).with_suffix("").as_posix())
    return f"{sample_id}_{safe.strip('_')[:120]}{extension}"


def images_dir(run_dir: Path, cycle: int | str) -> Path:
    return queries_path(run_dir, cycle).with_suffix("")


def export_queries(run_dir: Path, cycle: int | str, data: DataConfig, manifest: Manifest,
                   ids: np.ndarray, scores: np.ndarray, predicted: np.ndarray | None = None,
                   ) -> Path:
    """Rank 0: queries/<stage>.csv and the images in queries/<stage>/; returns the CSV's path."""
    folder = images_dir(run_dir, cycle)
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    reader = RandomAccessReader(data.root, "pool", transform=None, verify=data.verify_shards,
                                shard_url=data.shard_url, cache_dir=data.cache_dir)
    split = manifest.split("pool")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    # the sample's name in the user's data (an image folder's path, a WebDataset __key__, a
    # Hugging Face row), or the 10-digit id for a dataset prepared before keys were recorded
    originals = original_keys(data.root, "pool", ids, manifest)
    try:
        for n, sample_id in enumerate(ids.tolist()):
            _label, image = reader.read_raw(sample_id)  # the image only: a person labels it
            key = originals[n]
            name = image_name(sample_id, key, image_extension(image))
            (tmp / name).write_bytes(image)
            cls = "" if predicted is None else int(predicted[n])
            shard_key = key if manifest.in_place else sample_key(sample_id)  # its key in its shard
            w.writerow([sample_id, split.shard_of(sample_id).url, shard_key,
                        repr(float(scores[n])), key, f"{folder.name}/{name}", cls,
                        "" if cls == "" else manifest.class_names[cls]])
    finally:
        reader.close()
    fsync_dir(tmp)
    shutil.rmtree(folder, ignore_errors=True)  # an export interrupted after its rename
    tmp.rename(folder)
    return atomic_write_text(queries_path(run_dir, cycle), buf.getvalue())


def predicted_for(scores: dict[str, np.ndarray], ids: np.ndarray) -> np.ndarray | None:
    """The model's class for each of `ids` from a cycle's merged scores (ids ascending)."""
    if "predicted" not in scores:
        return None
    rows = np.searchsorted(scores["ids"], ids)
    return scores["predicted"][rows]


def hand_out(cfg, run_dir: Path, stage: int | str, manifest: Manifest, ids: np.ndarray,
             scores: np.ndarray, predicted: np.ndarray | None, push: bool = True) -> None:
    """Rank 0: make the queries of `stage` available to the person, once: the files, and with
    al.oracle=label_studio (push) the tasks in the project (cycle/label_studio.py)."""
    if not queries_path(run_dir, stage).exists():
        export_queries(run_dir, stage, cfg.data, manifest, ids, scores, predicted)
    if push and cfg.al.oracle == "label_studio":
        from tidal_dist.cycle.label_studio import push_tasks

        push_tasks(cfg, run_dir, stage, manifest)


def on_main_process(acc, work) -> None:
    """Run `work` on rank 0 only; the pause or bad input it raises is raised on every rank, so
    no rank waits at a barrier for a peer that stopped."""
    stop = None
    if acc.is_main_process:
        try:
            work()
        except (UserError, LabelsPending) as e:
            stop = (type(e).__name__, str(e))
    if acc.num_processes > 1:
        import torch.distributed as dist

        box = [stop]
        dist.broadcast_object_list(box, src=0)
        stop = box[0]
    if stop is not None:
        raise {"UserError": UserError, "LabelsPending": LabelsPending}[stop[0]](stop[1])


def ask_person(session, run_dir: Path, stage: int | str, ids: np.ndarray, scores: np.ndarray,
               predicted: np.ndarray | None) -> np.ndarray:
    """Every rank: a human oracle's labels for `ids`. Rank 0 hands the queries out (once) and,
    with Label Studio, pulls the finished annotations into labels/<stage>.json; then every rank
    imports the labels file, or stops with LabelsPending (exit 3) while it is not there."""
    cfg, manifest = session.cfg, session.manifest

    def hand_out_and_pull() -> None:
        hand_out(cfg, run_dir, stage, manifest, ids, scores, predicted)
        if cfg.al.oracle == "label_studio":
            from tidal_dist.cycle.label_studio import pull_labels

            pull_labels(cfg, run_dir, stage, manifest, ids)

    on_main_process(session.accelerator, hand_out_and_pull)
    return label_queries("file", run_dir, stage, manifest, cfg.data.root, ids)
