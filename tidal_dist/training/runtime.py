"""The Accelerator and the per-process settings every phase (train, evaluate, score) shares.

CPU recipe (docs/ecosystem.md): under torchrun / `accelerate launch`, `Accelerator(cpu=True)` gives
MULTI_CPU + gloo + DDP. DeepSpeed must NOT get cpu=True (Accelerate would drop it silently); on a
CPU it needs an explicit gloo process group instead.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from tidal_dist.config import Config
from tidal_dist.job.distributed import world_size
from tidal_dist.job.errors import UserError

log = logging.getLogger("tidal_dist")


@dataclass
class Precision:
    bf16: bool
    channels_last: bool


def resolve_precision(cfg: Config, on_gpu: bool) -> Precision:
    """auto: bf16 autocast on a GPU, fp32 on a CPU; bf16: autocast wherever it runs (on a CPU
    too, through torch's CPU autocast: slower than fp32 there, but the same code path a GPU
    runs, so it can be tested without one)."""
    mp = cfg.train.mixed_precision
    bf16 = mp == "bf16" or (on_gpu and mp == "auto")
    channels_last = on_gpu if cfg.train.channels_last is None else cfg.train.channels_last
    return Precision(bf16=bf16, channels_last=channels_last)


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """The protocol's batch (128) is global; each rank takes an equal share, rounded up."""
    return max(1, -(-global_batch // world_size))


def deepspeed_config(cfg: Config, micro_batch: int, bf16: bool) -> dict:
    if cfg.train.zero_stage not in (0, 1, 2):
        # Scoring and evaluation run a plain forward on each rank, with no collectives; ZeRO-3
        # shards the parameters themselves, so that forward would need them gathered.
        raise UserError("config key 'train.zero_stage': DeepSpeed runs support ZeRO stage 0, 1 or 2")
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "bf16": {"enabled": bf16},
        "gradient_clipping": 0.0,
        "steps_per_print": 10**9,  # silence DeepSpeed's own progress lines
    }


def build_accelerator(cfg: Config) -> Accelerator:
    on_gpu = torch.cuda.is_available()
    precision = resolve_precision(cfg, on_gpu)
    world = world_size()
    if not on_gpu:  # DeepSpeed would otherwise warn, on every rank, that it found no GPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # The process-group timeout bounds how long a rank waits for a dead peer. Only passed when
    # there is a group to make: Accelerate treats an explicit backend as "distributed".
    handlers = []
    if world > 1:
        handlers.append(InitProcessGroupKwargs(backend="nccl" if on_gpu else "gloo",
                                               timeout=timedelta(seconds=cfg.train.timeout_s)))
    mixed = "bf16" if precision.bf16 else "no"
    if cfg.train.engine == "deepspeed":
        micro = per_rank_batch(cfg.train.batch_size, world)
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(cfg, micro, precision.bf16))
        # ACCELERATE_USE_CPU=1 (how CPU launches are told apart) would make Accelerate drop the
        # plugin without a word and train with DDP.
        os.environ.pop("ACCELERATE_USE_CPU", None)
        acc = Accelerator(deepspeed_plugin=plugin, kwargs_handlers=handlers, mixed_precision=mixed)
        if acc.distributed_type != DistributedType.DEEPSPEED:
            raise RuntimeError(f"train.engine=deepspeed but Accelerate chose {acc.distributed_type}")
        return acc
    return Accelerator(cpu=not on_gpu, kwargs_handlers=handlers, mixed_precision=mixed)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class _TqdmHandler(logging.StreamHandler):
    """Log lines printed through tqdm.write, so they don't tear a progress bar apart."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(is_main: bool) -> None:
    """Rank 0 logs at INFO; the other ranks only report warnings and errors."""
    logger = logging.getLogger("tidal_dist")
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
