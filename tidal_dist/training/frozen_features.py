"""The frozen-feature path: with train.freeze=backbone the backbone does not change during a cycle,
so what the classifier and the heads read of it (the embedding and the four average-pooled stage
features) is computed once per cycle for the labeled set, and every epoch trains on those rows:
no image is decoded or passed through the backbone again in that cycle.

    once per cycle   each rank streams its share of the labeled ids through the frozen backbone
                     (training/inference.predict, the eval transform, exactly once over ranks
                     and workers, as scoring does); one all_gather gives every rank all rows,
                     kept in device memory in id order: N x (D + C1 + C2 + C3 + C4) float32
    every step       the rank's next batch positions as row indices -> BackboneOutputs ->
                     the network's forward (models/network.py) skips the backbone

The step itself (losses, TD records, the all_to_all of TD rows) is the image path's, so TD is
recorded exactly as there. What it gives up: augmentation (each labeled image is seen through the
eval transform, the same every epoch). Use it for linear probes on pretrained features, where a
cycle's epochs cost one forward of the labeled set plus the heads; keep the image path
(train.feature_cache=off) when augmentation matters. Candidates are scored by the usual single
pass per cycle (cycle/score.py), which already reads each of them through the backbone once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

from tidal_dist.config import Config
from tidal_dist.models.network import BackboneOutputs, pooled_outputs

log = logging.getLogger("tidal_dist")


def uses_feature_cache(cfg: Config) -> bool:
    return cfg.train.freeze == "backbone" and cfg.train.feature_cache == "auto"


def _gather_rows(ids: torch.Tensor, rows: torch.Tensor, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (ids, rows), concatenated: padded to the largest share for all_gather."""
    import torch.distributed as dist

    if world == 1:
        return ids, rows
    count = torch.tensor([len(ids)], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    most = int(max(c.item() for c in counts))
    pad_ids = torch.full((most,), -1, dtype=ids.dtype, device=ids.device)
    pad_ids[:len(ids)] = ids
    pad_rows = torch.zeros((most, rows.shape[1]), dtype=rows.dtype, device=rows.device)
    pad_rows[:len(rows)] = rows
    all_ids = [torch.empty_like(pad_ids) for _ in range(world)]
    all_rows = [torch.empty_like(pad_rows) for _ in range(world)]
    dist.all_gather(all_ids, pad_ids)
    dist.all_gather(all_rows, pad_rows)
    keep = [slice(0, int(c.item())) for c in counts]
    return (torch.cat([a[k] for a, k in zip(all_ids, keep)]),
            torch.cat([r[k] for r, k in zip(all_rows, keep)]))


class FeatureBatches:
    """The labeled set's backbone outputs, computed once; yields BackboneOutputs per step."""

    kind = "features"

    def __init__(self, session, labeled_ids: np.ndarray, batch: int, announce: bool) -> None:
        from tidal_dist.training.inference import predict

        self.session, self.batch, self.ids = session, batch, labeled_ids
        acc = session.accelerator
        backbone = acc.unwrap_model(session.model).backbone
        widths: list[int] = []

        def outputs(_model, x):
            pooled = pooled_outputs(backbone, x)
            widths[:] = [pooled.embedding.shape[1], *(f.shape[1] for f in pooled.stages)]
            return {"rows": torch.cat([pooled.embedding, *(f.flatten(1) for f in pooled.stages)],
                                      dim=1)}

        ids, rows = [], []
        for batch_ids, _labels, out in predict(session, "pool", session.cfg.train.eval_batch_size,
                                               ids=labeled_ids, forward=outputs):
            ids.append(batch_ids.to(acc.device))
            rows.append(out["rows"])
        if not widths:  # this rank's share was empty (more ranks than labeled samples)
            widths[:] = [backbone.embedding_dim, *backbone.stage_channels]
            rows.append(torch.zeros((0, sum(widths)), device=acc.device))
            ids.append(torch.zeros((0,), dtype=torch.long, device=acc.device))
        all_ids, all_rows = _gather_rows(torch.cat(ids), torch.cat(rows), acc.num_processes)
        order = torch.argsort(all_ids)
        if not torch.equal(all_ids[order].cpu(), torch.from_numpy(labeled_ids)):
            raise RuntimeError("the frozen-feature pass did not cover the labeled set exactly once")
        self.rows = all_rows[order].contiguous()
        self.splits = widths
        if announce:
            log.info("training data: frozen-feature path (%d x %d features, %.1f MiB on the "
                     "device; no augmentation)", *self.rows.shape,
                     self.rows.numel() * self.rows.element_size() / 2**20)

    def epoch(self, rank_ids: np.ndarray, valid: np.ndarray, epoch_seed: int, epoch: int,
              skip: int, model) -> Iterator[BackboneOutputs]:
        device = self.rows.device
        index = torch.from_numpy(np.searchsorted(self.ids, rank_ids)).to(device)
        for lo in range(skip * self.batch, len(rank_ids), self.batch):
            parts = torch.split(self.rows[index[lo:lo + self.batch]], self.splits, dim=1)
            yield BackboneOutputs(parts[0], [p[:, :, None, None] for p in parts[1:]])
