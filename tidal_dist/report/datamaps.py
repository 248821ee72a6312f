"""Data maps (Swayamdipta et al., "Dataset Cartography", EMNLP 2020) of each cycle's labeled set.

Per labeled sample, over its training visits (one per epoch):
    confidence   = mean of the gold-class probability
    variability  = its standard deviation (population std, as Cartography computes it)
    correctness  = fraction of visits where the argmax was the gold class

Two sources, in this order:
- td/stats.npy, float64 [N, 3] aligned with td/ids.npy: per sample the sums over visits of
  p_gold, p_gold^2 and [argmax == gold], with td/count.npy holding the visits. Flat cost per
  sample whatever the class count; variability = sqrt(E[p^2] - E[p]^2), clipped at 0 against
  rounding.
- td/epochs/probs_eEEEE.npy, float32 [N, C] per epoch (train.record_epoch_probs): computed
  directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EPOCH_FILE = re.compile(r"probs_e(\d+)\.npy$")


@dataclass
class DataMap:
    ids: np.ndarray
    gold: np.ndarray
    confidence: np.ndarray
    variability: np.ndarray
    correctness: np.ndarray
    visits: np.ndarray
    source: str  # "stats" or "epochs"


def gold_labels(cycle_dir: Path, ids: np.ndarray) -> np.ndarray:
    """Labels of `ids` from the cycle's labeled.npz (what the cycle trained on)."""
    with np.load(cycle_dir / "labeled.npz") as z:
        lab_ids, labels = z["ids"], z["labels"]
    order = np.argsort(lab_ids)
    pos = np.searchsorted(lab_ids[order], ids)
    if np.any(pos >= len(lab_ids)) or np.any(lab_ids[order][np.minimum(pos, len(lab_ids) - 1)] != ids):
        raise ValueError(f"{cycle_dir}: td/ids.npy holds ids that labeled.npz does not")
    return labels[order][pos].astype(np.int64)


def epoch_files(td_dir: Path) -> dict[int, Path]:
    folder = td_dir / "epochs"
    if not folder.is_dir():
        return {}
    found = {}
    for p in folder.iterdir():
        m = EPOCH_FILE.match(p.name)
        if m:
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def from_stats(ids: np.ndarray, gold: np.ndarray, stats: np.ndarray, count: np.ndarray) -> DataMap:
    stats = np.asarray(stats, dtype=np.float64)
    visits = np.asarray(count, dtype=np.float64)
    seen = visits > 0
    n = np.where(seen, visits, 1.0)
    confidence = stats[:, 0] / n
    variance = np.maximum(stats[:, 1] / n - confidence**2, 0.0)
    return DataMap(ids=ids[seen], gold=gold[seen], confidence=confidence[seen],
                   variability=np.sqrt(variance)[seen], correctness=(stats[:, 2] / n)[seen],
                   visits=visits[seen].astype(np.int64), source="stats")


def from_epoch_probs(ids: np.ndarray, gold: np.ndarray, probs: list[np.ndarray]) -> DataMap:
    rows = np.arange(len(ids))
    p_gold = np.stack([np.asarray(p, dtype=np.float64)[rows, gold] for p in probs])  # [E, N]
    correct = np.stack([np.argmax(p, axis=1) == gold for p in probs])
    return DataMap(ids=ids, gold=gold, confidence=p_gold.mean(axis=0),
                   variability=p_gold.std(axis=0), correctness=correct.mean(axis=0),
                   visits=np.full(len(ids), len(probs), dtype=np.int64), source="epochs")


def load_datamap(cycle_dir: Path) -> DataMap | None:
    """The cycle's data map, or None when the run recorded neither source."""
    td = cycle_dir / "td"
    if not (td / "ids.npy").is_file():
        return None
    ids = np.load(td / "ids.npy").astype(np.int64)
    if (td / "stats.npy").is_file() and (td / "count.npy").is_file():
        gold = gold_labels(cycle_dir, ids)
        return from_stats(ids, gold, np.load(td / "stats.npy"), np.load(td / "count.npy"))
    files = epoch_files(td)
    if files:
        gold = gold_labels(cycle_dir, ids)
        return from_epoch_probs(ids, gold, [np.load(p, mmap_mode="r") for p in files.values()])
    return None
