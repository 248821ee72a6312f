"""Measuring the candidates' training dynamics during training (dynamics/measured.py): after every
al.td_measure_every-th epoch (and after the last), the cycle's candidates go through the model in
eval mode without augmentation, each rank its own share (inference.predict, as scoring does), and
their softmax is added to the running state. Rank 0's BatchNorm statistics go to every rank
first (what DDP's next forward does anyway), so every rank measures the same model. The pass runs under a forked RNG, so the training
that follows draws exactly what it would have drawn unmeasured; its seconds are kept apart from
training's (`seconds`), for the cycle's metrics.

The candidates' images come from the pool as every pass's do (training/inference.py): decoded
once per process on the device where the session keeps the pool decoded (`path: decoded`), so a
measurement is a forward pass, else streamed from the shards at every measurement.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from tidal_dist.dynamics.measured import MeasuredTD
from tidal_dist.job import preemption
from tidal_dist.training.inference import predict
from tidal_dist.training.train import sync_buffers


class CandidateMeasurer:
    def __init__(self, session, candidates: np.ndarray, every: int):
        self.session = session
        self.every = max(1, int(every))
        self.state = MeasuredTD(candidates, session.num_classes, session.accelerator.device)
        self.seconds = 0.0
        self.measurements = 0
        self.path = "streamed" if session.decoded_split("pool") is None else "decoded"

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
            for ids, _labels, out in predict(self.session, "pool",
                                             self.session.cfg.al.score_batch_size,
                                             ids=self.state.ids):
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
