"""Measuring the candidates' training dynamics during training (dynamics/measured.py): after every
al.td_measure_every-th epoch (and after the last), the cycle's candidates go through the model in
eval mode without augmentation, each rank its own share (inference.predict, as scoring does), and
their softmax is added to the running state. Rank 0's BatchNorm statistics go to every rank
first (what DDP's next forward does anyway), so every rank measures the same model. The pass runs under a forked RNG, so the training
that follows draws exactly what it would have drawn unmeasured; its seconds are kept apart from
training's (`seconds`), for the cycle's metrics.

Where the candidates' images come from (`path`, chosen once per cycle and logged):
    decoded   this rank's share decoded once, at the cycle's start, into uint8 on the device
              (data/device_batches.py), and every measurement normalises it there: a
              measurement is then a forward pass, not a read and decode of every candidate.
              Taken when train.data_path is auto or device, the eval transform is `none` (so
              decode + normalise is exactly what the streamed path computes) and the share fits
              train.device_data_budget_mb.
    streamed  inference.predict over the shards at every measurement (train.data_path=loader,
              another eval transform, or a share over the budget).
Both give the same shares (StreamingDataset's split with no loader workers) and batches.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from tidal_dist.data.readers import StreamingDataset
from tidal_dist.data.train_batches import decode_on_device, fits_device
from tidal_dist.dynamics.measured import MeasuredTD
from tidal_dist.job import preemption
from tidal_dist.training.inference import predict, predict_decoded
from tidal_dist.training.train import sync_buffers

log = logging.getLogger("tidal_dist")


def candidate_path(cfg, manifest, share: int) -> tuple[str, str]:
    """('decoded' | 'streamed', why) for a rank measuring `share` candidates."""
    if cfg.train.data_path == "loader":
        return "streamed", "train.data_path=loader"
    if cfg.data.eval_transform != "none":
        return "streamed", f"eval transform '{cfg.data.eval_transform}' is not kept decoded"
    fits, why = fits_device(cfg, manifest, share, "share of the candidates")
    return ("decoded", why) if fits else ("streamed", why)


class CandidateMeasurer:
    def __init__(self, session, candidates: np.ndarray, every: int):
        self.session = session
        self.every = max(1, int(every))
        self.state = MeasuredTD(candidates, session.num_classes, session.accelerator.device)
        self.seconds = 0.0
        self.measurements = 0
        acc = session.accelerator
        self.share = StreamingDataset.assigned_ids(self.state.ids, acc.process_index,
                                                   acc.num_processes, 0)[0]
        # Every rank takes the same path: it is chosen on the largest share, not this rank's.
        largest = -(-len(self.state.ids) // acc.num_processes)
        self.path, why = candidate_path(session.cfg, session.manifest, largest)
        log.info("measured TD: candidates %s (%s)", self.path, why)
        self.images = None  # decoded at the first measurement (its seconds count as measuring)

    def due(self, epoch: int) -> bool:
        """After epoch `epoch` (0-based): every `every` epochs, and always after the last."""
        return (epoch + 1) % self.every == 0 or epoch + 1 == self.session.cfg.train.epochs

    def after_epoch(self, epoch: int) -> None:
        """Collective (every rank, same epochs): measure when due."""
        if not self.due(epoch):
            return
        t0 = time.time()
        acc = self.session.accelerator
        # One model on every rank: each holds the BatchNorm statistics of its own last batch
        # until DDP broadcasts rank 0's at the next forward, so broadcast them now.
        sync_buffers(acc.unwrap_model(self.session.model))
        self.state.begin()
        with torch.random.fork_rng(devices=[]):
            batch = self.session.cfg.al.score_batch_size
            if self.path == "decoded":
                if self.images is None and len(self.share):
                    self.images = decode_on_device(self.session, self.share)
                # a rank with no share (more ranks than candidates) measures nothing
                outputs = predict_decoded(self.session, self.images, self.share, batch) \
                    if len(self.share) else iter(())
            else:
                outputs = predict(self.session, "pool", batch, ids=self.state.ids)
            for ids, _labels, out in outputs:
                self.state.add(ids.numpy(), torch.softmax(out["logits"], dim=1))
        preemption.raise_if_agreed(acc.device, "measuring the candidates' training dynamics")
        self.state.finish(lambda t: acc.reduce(t, reduction="sum"))
        self.measurements += 1
        self.seconds += time.time() - t0

    def save(self, folder: Path) -> None:
        self.state.save(folder, self.session.accelerator.is_main_process)

    def load(self, folder: Path) -> None:
        self.state.load(folder)
        self.measurements = int(self.state.count.max().item()) if len(self.state.ids) else 0
