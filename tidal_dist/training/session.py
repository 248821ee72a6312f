"""What every phase of a run shares, built once per process: the accelerator, the network (its weights
persist across cycles: warm start), the resolved objective, the dataset's manifest and readers.

build_session checks, before the accelerator or any file, that the strategy, the objective and the
network fit together (an unknown name, a strategy reading a head the network will not have, an odd
per-rank batch for Learning Loss's pairs).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import nn

from tidal_dist.config import Config
from tidal_dist.data.decoded_split import DecodedSplit, choose_split_path
from tidal_dist.data.manifest import Manifest
from tidal_dist.data.readers import RandomAccessReader
from tidal_dist.data.transforms import build_transform
from tidal_dist.job.distributed import world_size
from tidal_dist.objectives import Objective
from tidal_dist.telemetry import Telemetry
from tidal_dist.training.runtime import Precision

log = logging.getLogger("tidal_dist")


@dataclass
class Session:
    """What every phase of a run shares: built once per process, reused across cycles."""

    cfg: Config
    accelerator: Accelerator
    model: nn.Module  # the raw models.Network: its weights persist across cycles (warm start)
    precision: Precision
    manifest: Manifest  # of cfg.data.root, read once per process
    objective: Objective  # what the classifier trains with (train.objective, resolved)
    train_reader: RandomAccessReader | None = None
    telemetry: Telemetry = field(default_factory=Telemetry)  # metrics.jsonl, trackers, log lines
    # split -> its images decoded on the device for evaluation and scoring, None: streamed
    decoded_splits: dict[str, DecodedSplit | None] = field(default_factory=dict)

    @property
    def records_td(self) -> bool:
        """The network has a TD module, so every visit is recorded in the TD buffers."""
        return getattr(self.accelerator.unwrap_model(self.model), "td_module", None) is not None

    @property
    def num_classes(self) -> int:
        return self.manifest.num_classes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def reader(self) -> RandomAccessReader:
        if self.train_reader is None:
            c = self.cfg.data
            transform = build_transform(c.train_transform, self.manifest, train=True,
                                        crop_padding=c.crop_padding, image_size=c.image_size,
                                        interpolation=c.interpolation)
            self.train_reader = RandomAccessReader(c.root, "pool", transform, verify=c.verify_shards,
                                                   shard_url=c.shard_url, cache_dir=c.cache_dir)
        return self.train_reader

    def decoded_split(self, split: str) -> DecodedSplit | None:
        """The split's decoded images (data/decoded_split.py) when passes over it take the
        decoded path, else None (streamed); decided, and logged, at the first pass."""
        if split not in self.decoded_splits:
            path, why = choose_split_path(self.cfg, self.manifest, split)
            if self.accelerator.is_main_process:
                log.info("%s split: %s (%s)", split, path, why)
            self.decoded_splits[split] = (DecodedSplit(self.cfg, self.manifest, split, self.device)
                                          if path == "decoded" else None)
        return self.decoded_splits[split]

    def to_device(self, x: torch.Tensor, model: nn.Module) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # DeepSpeed with bf16 keeps bf16 parameters and does not cast the inputs for us.
        param_dtype = next(model.parameters()).dtype
        return x.to(param_dtype) if param_dtype != x.dtype else x


def build_session(cfg: Config, model: nn.Module | None = None) -> Session:
    """Accelerator, logging, seeds and the model for this process. `model` overrides the config's
    (tests pass stand-in models through it)."""
    from tidal_dist.data.manifest import load_manifest
    from tidal_dist.models import available_outputs, build_model
    from tidal_dist.objectives import resolve_objective
    from tidal_dist.strategies import check_outputs, get_strategy
    from tidal_dist.training.runtime import build_accelerator, resolve_precision, seed_everything, setup_logging

    # Settings that cannot work fail here, before the accelerator or any file.
    strategy = get_strategy(cfg.al.strategy)
    objective = resolve_objective(cfg, strategy.objective)
    objective.validate(cfg.train, world_size())
    manifest = load_manifest(cfg.data.root)
    if cfg.data.mean is not None or cfg.data.std is not None:
        # every reader and decoder normalises with the manifest's values: carry the config's
        manifest = dataclasses.replace(manifest, mean=cfg.data.mean or manifest.mean,
                                       std=cfg.data.std or manifest.std)
    acc = build_accelerator(cfg)
    setup_logging(acc.is_main_process)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    in_channels = 1 if manifest.mode == "L" else 3
    if model is None:
        model = build_model(cfg.model, manifest.num_classes, in_channels, objective.heads(cfg.train))
    check_outputs(strategy, available_outputs(model), objective.name)
    if cfg.train.freeze == "backbone":
        model.freeze_backbone()
    if cfg.train.sync_batchnorm:  # statistics over the global batch: any world size, same result
        from tidal_dist.models.sync_batchnorm import convert_batchnorm

        model = convert_batchnorm(model)
    precision = resolve_precision(cfg, torch.cuda.is_available())
    model = model.to(acc.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if acc.is_main_process:
        log.info("%s: %d process(es), %s, device %s, bf16=%s, model %s (%.2fM params), "
                 "strategy %s, objective %s", acc.distributed_type, acc.num_processes,
                 cfg.train.engine, acc.device, precision.bf16, type(model).__name__,
                 sum(p.numel() for p in model.parameters()) / 1e6, strategy.name, objective.name)
    return Session(cfg=cfg, accelerator=acc, model=model, precision=precision, manifest=manifest,
                   objective=objective)
