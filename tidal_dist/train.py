"""One active-learning cycle of TiDAL training with Accelerate (DDP or DeepSpeed ZeRO-1/2).

Per epoch, every rank takes an equal, padded share of a seeded permutation of the labeled ids
(data.readers.epoch_assignment); padding rows are marked invalid and count neither in the loss nor
in the TD record. Each step, at the rank's batch positions [lo, lo + B) of the epoch:

    logits, td_logits = model(x)
    p      = softmax(logits).detach()                    # this visit's TD sample
    target = (sum[j] + p) / (count[j] + 1)               # running mean incl. this visit
    loss   = CE(logits, y) + λ · KL(target ‖ softmax(td_logits))      (tidal-method.md)

and the rank adds p to its device-resident rows (td_state.DeviceTD). At the end of the epoch one
all_to_all moves the rows to the ranks that visit them next; at the end of the cycle rank 0 writes
the memory-mapped buffers (td_buffer.py, docs/td-gathering.md). Batches come from the loader path
or the device-resident path (data/train_batches.py). Model and optimizer go through
accelerator.prepare; the data does not (we split it ourselves, exactly once).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from tidal_dist.config import Config
from tidal_dist.data.manifest import Manifest
from tidal_dist.data.readers import RandomAccessReader, epoch_assignment
from tidal_dist.data.train_batches import build_batches
from tidal_dist.data.transforms import build_transform
from tidal_dist.models import tidal_loss
from tidal_dist.runtime import Precision, per_rank_batch
from tidal_dist.td_state import DeviceTD, EpochLayout, check_epoch_probs_size

log = logging.getLogger("tidal_dist")


@dataclass
class Session:
    """What every phase of a run shares: built once per process, reused across cycles."""

    cfg: Config
    accelerator: Accelerator
    model: nn.Module  # the raw TiDALNet: its weights persist across cycles (warm start)
    precision: Precision
    manifest: Manifest  # of cfg.data.root, read once per process
    train_reader: RandomAccessReader | None = None

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
                                        crop_padding=c.crop_padding, image_size=c.image_size)
            self.train_reader = RandomAccessReader(c.root, "pool", transform, verify=c.verify_shards)
        return self.train_reader

    def to_device(self, x: torch.Tensor, model: nn.Module) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # DeepSpeed with bf16 keeps bf16 parameters and does not cast the inputs for us.
        param_dtype = next(model.parameters()).dtype
        return x.to(param_dtype) if param_dtype != x.dtype else x


@dataclass
class EpochStats:
    loss: float = 0.0
    ce: float = 0.0
    kl: float = 0.0
    samples: int = 0
    seconds: float = 0.0


@dataclass
class CycleResult:
    epochs: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = ""  # the prepared model's type: DistributedDataParallel, DeepSpeedEngine, ...


def build_optimizer(cfg: Config, model: nn.Module) -> tuple[torch.optim.Optimizer, object]:
    """Fresh every cycle (tidal-method.md: optimizers and LR schedules are recreated)."""
    t = cfg.train
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                          weight_decay=t.weight_decay)
    milestones = sorted({max(1, round(f * t.epochs)) for f in t.lr_decay_at})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=t.lr_gamma)
    return opt, sched


def epoch_seed(cfg: Config, cycle: int) -> int:
    return cfg.run.seed * 1_000_003 + cycle


def train_cycle(session: Session, labeled_ids: np.ndarray, labels: np.ndarray, work_dir: Path,
                cycle: int) -> CycleResult:
    """Train for cfg.train.epochs epochs on `labeled_ids` (with `labels`, aligned), recording TD in
    work_dir/td and checkpointing in work_dir/ckpt; resumes from the newest checkpoint there."""
    from tidal_dist import checkpoint, faults, preemption

    cfg, acc = session.cfg, session.accelerator
    rank, world = acc.process_index, acc.num_processes
    order = np.argsort(labeled_ids)
    labeled_ids = np.asarray(labeled_ids, dtype=np.int64)[order]
    labels = np.asarray(labels, dtype=np.int64)[order]
    td_dir, ckpt_root = work_dir / "td", work_dir / "ckpt"
    if cfg.train.record_epoch_probs:
        check_epoch_probs_size(len(labeled_ids), session.num_classes, cfg.train.epochs)
    start = time.time()

    acc.free_memory()  # drop the previous cycle's wrapped model / optimizer / engine
    optimizer, scheduler = build_optimizer(cfg, session.model)
    model, optimizer = acc.prepare(session.model, optimizer)
    forward = torch.compile(model) if cfg.train.compile else model
    resume = checkpoint.latest(ckpt_root)
    start_epoch, start_step = 0, 0
    sums = torch.zeros(4, dtype=torch.float64, device=acc.device)  # loss, ce, kl, n (weighted)
    if resume is not None:
        meta = checkpoint.load(acc, model, optimizer, scheduler, resume)
        start_epoch, start_step = meta["epoch"], meta["step"]
        sums = torch.tensor(meta["sums"], dtype=torch.float64, device=acc.device)
        if acc.is_main_process:
            log.info("cycle %d: resuming at epoch %d, step %d from %s", cycle, start_epoch + 1,
                     start_step, resume)
    batch = per_rank_batch(cfg.train.batch_size, world)
    seed = epoch_seed(cfg, cycle)
    td = DeviceTD(labeled_ids, session.num_classes,
                  EpochLayout(len(labeled_ids), start_epoch, seed, world, batch), rank, acc.device,
                  record_epoch_probs=cfg.train.record_epoch_probs)
    if resume is not None:
        td.load(resume / "td")
    batches = build_batches(session, labeled_ids, batch, announce=acc.is_main_process)
    result = CycleResult(engine=type(model).__name__)
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.time()
        skip = start_step if epoch == start_epoch else 0
        rank_ids, valid = epoch_assignment(labeled_ids, epoch, seed, rank, world, batch_size=batch)
        # Labels (the AL state's, not the shards') and the valid mask: on the device, once an epoch.
        y_epoch = torch.from_numpy(labels[np.searchsorted(labeled_ids, rank_ids)]).to(acc.device)
        v_epoch = torch.from_numpy(valid).to(acc.device)
        model.train()
        bar = tqdm(batches.epoch(rank_ids, valid, seed, epoch, skip, model),
                   total=len(rank_ids) // batch - skip,
                   desc=f"cycle {cycle} epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=not acc.is_main_process, leave=False, dynamic_ncols=True)
        for step, x in enumerate(bar, start=skip):
            lo = step * batch
            y, v_dev = y_epoch[lo:lo + batch], v_epoch[lo:lo + batch]
            with acc.autocast():
                logits, td_logits = forward(x)
            logits, td_logits = logits.float(), td_logits.float()
            probs = F.softmax(logits.detach(), dim=1)
            # Padding rows have zero TD rows, so every row has a finite target; the loss masks them.
            target = td.targets(lo, probs)
            total, ce, kl = tidal_loss(logits, td_logits, y, target, cfg.train.td_weight, valid=v_dev)
            acc.backward(total)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            td.record(lo, probs, y, v_dev)
            faults.maybe_crash_in_epoch(epoch, step)
            n = v_dev.sum()
            sums += torch.stack([total.detach() * n, ce.detach() * n, kl.detach() * n, n]).double()
            if acc.is_main_process and step % cfg.run.log_every == 0:
                bar.set_postfix(loss=f"{total.item():.3f}", kl=f"{kl.item():.4f}")
            if preemption.agreed(acc.device):
                checkpoint.save(acc, model, optimizer, scheduler, td, ckpt_root, epoch, step + 1, sums)
                raise preemption.Preempted(f"cycle {cycle}, epoch {epoch + 1}, step {step + 1}")
        bar.close()
        scheduler.step()
        if cfg.train.record_epoch_probs:
            td.write_epoch_probs(td_dir / "epochs" / f"probs_e{epoch:04d}.npy")
        if epoch + 1 < cfg.train.epochs:
            td.advance()

        total_sums = acc.reduce(sums.clone(), reduction="sum")
        n = max(total_sums[3].item(), 1.0)
        stats = EpochStats(loss=total_sums[0].item() / n, ce=total_sums[1].item() / n,
                           kl=total_sums[2].item() / n, samples=int(total_sums[3].item()),
                           seconds=time.time() - t0)
        result.epochs.append(stats)
        sums.zero_()
        if acc.is_main_process:
            log.info("cycle %d epoch %d/%d: loss %.4f (ce %.4f, kl %.4f) on %d samples, %.1fs",
                     cycle, epoch + 1, cfg.train.epochs, stats.loss, stats.ce, stats.kl,
                     stats.samples, stats.seconds)
        every = cfg.train.checkpoint_every
        if every > 0 and (epoch + 1) % every == 0 and epoch + 1 < cfg.train.epochs:
            checkpoint.save(acc, model, optimizer, scheduler, td, ckpt_root, epoch + 1, 0, sums)
    td.save(td_dir)  # rank 0 writes the committed buffers, in id order
    acc.wait_for_everyone()
    sync_buffers(session.model)
    result.seconds = time.time() - start
    return result


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics. DDP broadcasts buffers at the start of
    each forward, so after the last step each rank holds stats updated by its own last batch;
    evaluation and scoring must see one model, whatever the world size."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)


def build_session(cfg: Config, model: nn.Module | None = None) -> Session:
    """Accelerator, logging, seeds and the model for this process. `model` overrides the config's
    (tests pass stand-in models through it)."""
    from tidal_dist.data.manifest import load_manifest
    from tidal_dist.models import build_model
    from tidal_dist.runtime import build_accelerator, resolve_precision, seed_everything, setup_logging

    manifest = load_manifest(cfg.data.root)
    acc = build_accelerator(cfg)
    setup_logging(acc.is_main_process)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    in_channels = 1 if manifest.mode == "L" else 3
    if model is None:
        model = build_model(cfg.model, manifest.num_classes, in_channels)
    precision = resolve_precision(cfg, torch.cuda.is_available())
    model = model.to(acc.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if acc.is_main_process:
        log.info("%s: %d process(es), %s, device %s, bf16=%s, model %s (%.2fM params)",
                 acc.distributed_type, acc.num_processes, cfg.train.engine, acc.device,
                 precision.bf16, type(model).__name__,
                 sum(p.numel() for p in model.parameters()) / 1e6)
    return Session(cfg=cfg, accelerator=acc, model=model, precision=precision, manifest=manifest)


def train_main(cfg: Config) -> int:
    """`tidal-dist train`: one cycle on the initial labeled set, then test accuracy."""
    from tidal_dist.config import bind_run_dir
    from tidal_dist.data.manifest import load_labels
    from tidal_dist.evaluate import evaluate
    from tidal_dist.fsutil import atomic_write_json
    from tidal_dist.pool import initial_labeled_set

    session = build_session(cfg)
    acc = session.accelerator
    run_dir = bind_run_dir(cfg, write=acc.is_main_process)
    labeled = initial_labeled_set(cfg)
    labels = load_labels(cfg.data.root, "pool")[labeled - session.manifest.split("pool").first_id]
    result = train_cycle(session, labeled, labels, run_dir / "train", cycle=0)
    metrics = evaluate(session)
    if acc.is_main_process:
        atomic_write_json(run_dir / "train" / "metrics.json", {
            "labeled": len(labeled), "world_size": acc.num_processes, **metrics,
            "epochs": [vars(e) for e in result.epochs], "seconds": result.seconds})
        log.info("test accuracy %.4f on %d samples; results in %s", metrics["accuracy"],
                 metrics["num_samples"], run_dir / "train")
    acc.wait_for_everyone()
    acc.end_training()
    return 0
