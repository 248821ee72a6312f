"""Which pool ids an experiment can label, and the seeded initial labeled set.

Imbalanced pools are built at run time by selecting ids (no re-sharding), as the TiDAL reference
does: one reserved sample per class, the rest subsampled to an exponential long tail
(data/imbalance.py). The reserved samples start labeled.

A pool whose stored labels are incomplete (an unlabeled or partly labeled pool: label -1 in the
manifest's labels) draws a simulated oracle's initial labeled set from the ids with a known
label (a person as oracle labels the drawn set first, cycle/initial.py), and refuses what would
read a label it does not have (an imbalanced pool, a validation hold-out).
"""

from __future__ import annotations

import numpy as np

from tidal_dist.config import Config
from tidal_dist.cycle.oracle import HUMAN_ORACLES
from tidal_dist.data.imbalance import imbalanced_pool
from tidal_dist.data.manifest import known_label_mask, load_labels, load_manifest
from tidal_dist.job.errors import UserError


VAL_SEED = 0x7A1  # one validation draw for every run of a dataset, whatever run.seed


def validation_ids(cfg: Config) -> np.ndarray:
    """The al.val_size pool ids held out for validation, ascending (empty when 0)."""
    manifest = load_manifest(cfg.data.root)
    ids = manifest.split("pool").ids()
    n = cfg.al.val_size
    if n >= len(ids):
        raise UserError(f"config key 'al.val_size': {n} leaves nothing of the pool's {len(ids)} "
                        f"samples to label")
    drawn = np.sort(np.random.default_rng(VAL_SEED).choice(ids, size=n, replace=False))
    if n and not manifest.pool_fully_labeled:
        known = known_label_mask(load_labels(cfg.data.root, "pool", manifest)[drawn - ids[0]])
        if not known.all():
            raise UserError(f"config key 'al.val_size': the validation hold-out needs labels, and "
                            f"{int((~known).sum())} of its {n} samples have none in data.root "
                            f"'{cfg.data.root}' (an unlabeled pool); set al.val_size=0")
    return drawn


def pool_ids(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(all ids of the experiment's pool, ids that must start labeled), both ascending. The
    validation hold-out (al.val_size) is not part of the pool."""
    manifest = load_manifest(cfg.data.root)
    ids = manifest.split("pool").ids()
    if cfg.al.val_size:
        ids = np.setdiff1d(ids, validation_ids(cfg), assume_unique=True)
    if cfg.data.imbalance_ratio is None:
        return ids, np.zeros(0, dtype=np.int64)
    if not manifest.pool_fully_labeled:
        raise UserError(f"config key 'data.imbalance_ratio': an imbalanced pool is built from the "
                        f"classes of every pool sample, and data.root '{cfg.data.root}' has labels "
                        f"for only {manifest.split('pool').labeled_count} of "
                        f"{manifest.split('pool').num_samples}; leave data.imbalance_ratio unset")
    labels = load_labels(cfg.data.root, "pool")
    pool, reserved = imbalanced_pool(labels, ids, manifest.num_classes, cfg.data.imbalance_ratio,
                                     seed=cfg.run.seed)
    return np.union1d(pool, reserved), reserved


def initial_labeled_set(cfg: Config) -> np.ndarray:
    """Seeded random draw of al.initial ids (reserved per-class samples first, if any). With a
    person as oracle (al.oracle file or label_studio) they label the set before any training,
    so any pool id may be drawn; otherwise only ids whose stored label is known."""
    ids, reserved = pool_ids(cfg)
    n = cfg.al.initial
    if n > len(ids):
        raise UserError(f"config key 'al.initial': {n} exceeds the pool's {len(ids)} samples")
    if n < len(reserved):
        raise UserError(f"config key 'al.initial': {n} is fewer than the {len(reserved)} "
                        f"reserved per-class samples of an imbalanced pool")
    rest = np.setdiff1d(ids, reserved, assume_unique=True)
    manifest = load_manifest(cfg.data.root)
    person_labels = cfg.al.oracle in HUMAN_ORACLES
    if not manifest.pool_fully_labeled and not person_labels:  # only known labels start labeled
        pool = manifest.split("pool")
        rest = rest[known_label_mask(load_labels(cfg.data.root, "pool", manifest)[rest - pool.first_id])]
        if n > len(rest):
            raise UserError(
                f"config key 'al.initial': {n} labeled samples to start from, and only {len(rest)} "
                f"pool samples of data.root '{cfg.data.root}' have a known label (it holds "
                f"{pool.num_samples}, {pool.num_samples - pool.labeled_count} unlabeled); lower "
                f"al.initial to at most {len(rest)}, or let a person label cycle 0's set "
                f"(al.oracle=file)")
    rng = np.random.default_rng(cfg.run.seed)
    drawn = rng.choice(rest, size=n - len(reserved), replace=False)
    return np.sort(np.concatenate([reserved, drawn]).astype(np.int64))
