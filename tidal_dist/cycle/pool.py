"""Which pool ids an experiment can label, and the seeded initial labeled set.

Imbalanced pools are built at run time by selecting ids (no re-sharding), as the TiDAL reference
does: one reserved sample per class, the rest subsampled to an exponential long tail
(data/imbalance.py). The reserved samples start labeled.
"""

from __future__ import annotations

import numpy as np

from tidal_dist.config import Config
from tidal_dist.data.imbalance import imbalanced_pool
from tidal_dist.data.manifest import load_labels, load_manifest
from tidal_dist.job.errors import UserError


VAL_SEED = 0x7A1  # one validation draw for every run of a dataset, whatever run.seed


def validation_ids(cfg: Config) -> np.ndarray:
    """The al.val_size pool ids held out for validation, ascending (empty when 0)."""
    ids = load_manifest(cfg.data.root).split("pool").ids()
    n = cfg.al.val_size
    if n >= len(ids):
        raise UserError(f"config key 'al.val_size': {n} leaves nothing of the pool's {len(ids)} "
                        f"samples to label")
    return np.sort(np.random.default_rng(VAL_SEED).choice(ids, size=n, replace=False))


def pool_ids(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(all ids of the experiment's pool, ids that must start labeled), both ascending. The
    validation hold-out (al.val_size) is not part of the pool."""
    manifest = load_manifest(cfg.data.root)
    ids = manifest.split("pool").ids()
    if cfg.al.val_size:
        ids = np.setdiff1d(ids, validation_ids(cfg), assume_unique=True)
    if cfg.data.imbalance_ratio is None:
        return ids, np.zeros(0, dtype=np.int64)
    labels = load_labels(cfg.data.root, "pool")
    pool, reserved = imbalanced_pool(labels, ids, manifest.num_classes, cfg.data.imbalance_ratio,
                                     seed=cfg.run.seed)
    return np.union1d(pool, reserved), reserved


def initial_labeled_set(cfg: Config) -> np.ndarray:
    """Seeded random draw of al.initial ids (reserved per-class samples first, if any)."""
    ids, reserved = pool_ids(cfg)
    n = cfg.al.initial
    if n > len(ids):
        raise UserError(f"config key 'al.initial': {n} exceeds the pool's {len(ids)} samples")
    if n < len(reserved):
        raise UserError(f"config key 'al.initial': {n} is fewer than the {len(reserved)} "
                        f"reserved per-class samples of an imbalanced pool")
    rng = np.random.default_rng(cfg.run.seed)
    rest = np.setdiff1d(ids, reserved, assume_unique=True)
    drawn = rng.choice(rest, size=n - len(reserved), replace=False)
    return np.sort(np.concatenate([reserved, drawn]).astype(np.int64))
