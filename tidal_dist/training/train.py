"""One active-learning cycle of training with Accelerate (DDP or DeepSpeed ZeRO-1/2).

Per epoch, every rank takes an equal, padded share of a seeded permutation of the labeled ids
(data.readers.epoch_assignment); padding rows are marked invalid and count neither in the loss nor
in the TD buffers. Each step:

    out    = model(x, **objective.detach(epoch))       # logits, embedding, td_logits, ...
    p      = softmax(out["logits"]).detach()           # this visit's TD sample
    target = (sum[j] + p) / (count[j] + 1)             # running mean incl. this visit (position j)
    loss   = objective.loss(out, batch)                # ce | tidal | lloss (tidal_dist/objectives/)

and, when the network has a TD module, the rank adds p to its device-resident rows
(dynamics.DeviceTD). At the end of the epoch one all_to_all moves the rows to the ranks that visit
them next; at the end of the cycle rank 0 writes the memory-mapped buffers (dynamics/buffer.py,
docs/td-gathering.md). Batches come from the loader path or the device-resident path
(data/train_batches.py). Model and optimizer go through accelerator.prepare; the data does not (we
split it ourselves, exactly once).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tidal_dist.config import Config
from tidal_dist.data.readers import epoch_assignment
from tidal_dist.data.train_batches import build_batches
from tidal_dist.dynamics.state import DeviceTD, EpochLayout, NoTD, check_epoch_probs_size
from tidal_dist.objectives import StepBatch
from tidal_dist.telemetry import progress
from tidal_dist.training.frozen_features import FeatureBatches, uses_feature_cache
from tidal_dist.training.runtime import per_rank_batch
from tidal_dist.training.session import Session, build_session

log = logging.getLogger("tidal_dist")


@dataclass
class EpochStats:
    loss: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)  # the objective's terms: ce, kl, lloss
    samples: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"loss": self.loss, **self.parts, "samples": self.samples, "seconds": self.seconds}

    @staticmethod
    def from_dict(d: dict) -> "EpochStats":
        fixed = ("loss", "samples", "seconds")
        return EpochStats(loss=d["loss"], samples=d["samples"], seconds=d["seconds"],
                          parts={k: v for k, v in d.items() if k not in fixed})


@dataclass
class CycleResult:
    epochs: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = ""  # the prepared model's type: DistributedDataParallel, DeepSpeedEngine, ...
    notes: dict = field(default_factory=dict)  # e.g. resumed with another world size: metrics


def build_optimizer(cfg: Config, model: nn.Module) -> tuple[torch.optim.Optimizer, object]:
    """Fresh every cycle (tidal-method.md: optimizers and LR schedules are recreated);
    train.optimizer / schedule / warmup_epochs (training/optim.py)."""
    from tidal_dist.training.optim import build_optimizer as build

    return build(cfg, model)


def epoch_seed(cfg: Config, cycle: int) -> int:
    return cfg.run.seed * 1_000_003 + cycle


def train_cycle(session: Session, labeled_ids: np.ndarray, labels: np.ndarray, work_dir: Path,
                cycle: int, measure=None) -> CycleResult:
    """Train for cfg.train.epochs epochs on `labeled_ids` (with `labels`, aligned), recording TD in
    work_dir/td and checkpointing in work_dir/ckpt; resumes from the newest checkpoint there.
    `measure` (training.measure.CandidateMeasurer): measures the candidates' TD after the epochs
    it is due, checkpointed with the rest."""
    from tidal_dist.job import faults, preemption
    from tidal_dist.training import checkpoint

    cfg, acc, objective = session.cfg, session.accelerator, session.objective
    rank, world = acc.process_index, acc.num_processes
    order = np.argsort(labeled_ids)
    labeled_ids = np.asarray(labeled_ids, dtype=np.int64)[order]
    labels = np.asarray(labels, dtype=np.int64)[order]
    td_dir, ckpt_root = work_dir / "td", work_dir / "ckpt"
    if cfg.train.record_epoch_probs:
        check_epoch_probs_size(len(labeled_ids), session.num_classes, cfg.train.epochs)
    part_names = objective.part_names(cfg.train)
    start = time.time()

    acc.free_memory()  # drop the previous cycle's wrapped model / optimizer / engine
    optimizer, scheduler = build_optimizer(cfg, session.model)
    model, optimizer = acc.prepare(session.model, optimizer)
    forward = torch.compile(model) if cfg.train.compile else model
    resume = checkpoint.latest(ckpt_root)
    start_epoch, start_step = 0, 0
    # Per epoch: loss, each objective term, number of valid rows (sums over this rank's rows).
    sums = torch.zeros(len(part_names) + 2, dtype=torch.float64, device=acc.device)
    result = CycleResult(engine=type(model).__name__)
    if resume is not None:
        meta = checkpoint.load(acc, model, optimizer, scheduler, resume)
        start_epoch, start_step = meta["epoch"], meta["step"]
        sums = checkpoint.partial_sums(meta, acc)
        result.epochs = [EpochStats.from_dict(e) for e in meta.get("epochs", [])]
        result.notes = checkpoint.describe_resume(meta, acc, cycle, resume)
    batch = per_rank_batch(cfg.train.batch_size, world)
    seed = epoch_seed(cfg, cycle)
    if session.records_td:
        td = DeviceTD(labeled_ids, session.num_classes,
                      EpochLayout(len(labeled_ids), start_epoch, seed, world, batch), rank,
                      acc.device, record_epoch_probs=cfg.train.record_epoch_probs)
    else:
        td = NoTD(session.num_classes, rank)
    if resume is not None:
        td.load(resume / "td")
        if measure is not None:
            measure.load(resume / "measured_td")
    if uses_feature_cache(cfg):  # a frozen backbone's outputs, computed once for the cycle
        batches = FeatureBatches(session, labeled_ids, batch, announce=acc.is_main_process)
    else:
        batches = build_batches(session, labeled_ids, batch, announce=acc.is_main_process)
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.time()
        skip = start_step if epoch == start_epoch else 0
        rank_ids, valid = epoch_assignment(labeled_ids, epoch, seed, rank, world, batch_size=batch)
        # Labels (the AL state's, not the shards') and the valid mask: on the device, once an epoch.
        y_epoch = torch.from_numpy(labels[np.searchsorted(labeled_ids, rank_ids)]).to(acc.device)
        v_epoch = torch.from_numpy(valid).to(acc.device)
        detach = objective.detach(epoch, cfg.train)
        model.train()
        bar = progress(batches.epoch(rank_ids, valid, seed, epoch, skip, model),
                       total=len(rank_ids) // batch - skip,
                       desc=f"cycle {cycle} epoch {epoch + 1}/{cfg.train.epochs}",
                       unit="batches", enabled=acc.is_main_process)
        for step, x in enumerate(bar, start=skip):
            lo = step * batch
            y, v_dev = y_epoch[lo:lo + batch], v_epoch[lo:lo + batch]
            with acc.autocast():
                out = forward(x, **detach)
            out = {name: value.float() for name, value in out.items()}
            probs = F.softmax(out["logits"].detach(), dim=1)
            # Padding rows have zero TD rows, so every row has a finite target; the loss masks them.
            target = td.targets(lo, probs)
            rows = global_rows(len(labeled_ids), step, batch, world)
            total, parts = objective.loss(out, StepBatch(y, v_dev, target, rows), cfg.train, epoch)
            acc.backward(total)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            td.record(lo, probs, y, v_dev)
            faults.maybe_crash_in_epoch(epoch, step)
            sums += torch.stack([total.detach() * rows, *(parts[p].detach() * rows for p in part_names),
                                 v_dev.sum()]).double()
            if acc.is_main_process and step % cfg.run.log_every == 0:
                session.telemetry.step(
                    cycle, epoch, step, epochs=cfg.train.epochs,
                    steps_per_epoch=math.ceil(len(rank_ids) / batch), lr=scheduler.get_last_lr()[0],
                    samples_per_s=(step + 1 - skip) * batch * world / max(time.time() - t0, 1e-9),
                    loss=total.item(), **{p: parts[p].item() for p in part_names})
                bar.set_postfix(loss=f"{total.item():.3f}")
            if preemption.agreed(acc.device):
                checkpoint.save(acc, model, optimizer, scheduler, td, ckpt_root, epoch, step + 1,
                                sums, epochs=[e.to_dict() for e in result.epochs], measured=measure)
                raise preemption.Preempted(f"cycle {cycle}, epoch {epoch + 1}, step {step + 1}")
        bar.close()
        lr = scheduler.get_last_lr()[0]  # the rate this epoch trained with
        scheduler.step()
        if cfg.train.record_epoch_probs:
            td.write_epoch_probs(td_dir / "epochs" / f"probs_e{epoch:04d}.npy")
        if epoch + 1 < cfg.train.epochs:
            td.advance()
        if measure is not None:
            measure.after_epoch(epoch)

        total_sums = acc.reduce(sums.clone(), reduction="sum").tolist()
        n = max(total_sums[-1], 1.0)
        stats = EpochStats(loss=total_sums[0] / n, samples=int(total_sums[-1]),
                           parts={p: v / n for p, v in zip(part_names, total_sums[1:-1])},
                           seconds=time.time() - t0)
        result.epochs.append(stats)
        sums.zero_()
        if acc.is_main_process:
            session.telemetry.epoch(cycle, epoch, cfg.train.epochs, lr=lr, **stats.to_dict())
        every = cfg.train.checkpoint_every
        if every > 0 and (epoch + 1) % every == 0 and epoch + 1 < cfg.train.epochs:
            checkpoint.save(acc, model, optimizer, scheduler, td, ckpt_root, epoch + 1, 0, sums,
                            epochs=[e.to_dict() for e in result.epochs], measured=measure)
    td.save(td_dir)  # rank 0 writes the committed buffers, in id order
    acc.wait_for_everyone()
    sync_buffers(session.model)
    result.seconds = time.time() - start
    return result


def global_rows(num_ids: int, step: int, batch: int, world: int) -> float:
    """The loss denominator of `step` (objectives/base.py): valid rows of the global batch over
    the world size. Global batch `step` is positions [step·W·b, (step+1)·W·b) of the padded
    permutation (epoch_assignment interleaves ranks), so every rank computes it, no collective."""
    valid = min(max(num_ids - step * world * batch, 0), world * batch)
    return max(valid, 1) / world


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics. DDP broadcasts buffers at the start of
    each forward, so after the last step each rank holds stats updated by its own last batch;
    evaluation and scoring must see one model, whatever the world size."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)
