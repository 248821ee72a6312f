"""Mid-cycle training checkpoints: model, optimizer, LR schedule, every rank's RNG, TD buffers.

Layout, inside a cycle's work folder:
    ckpt/latest                 text: the name of the newest complete checkpoint
    ckpt/e0004_s0000/           train_state.pt (rank 0), rng.rank{R}.pt (each rank), td/ snapshot
                                (gathered from every rank's device rows, written by rank 0),
                                measured_td/ (the candidates' measured TD, when measured),
                                meta.json (epoch, step, partial-epoch sums)

A checkpoint folder is written under a `.partial` name and renamed when complete, and `latest` is
replaced atomically after that: a kill at any moment leaves the previous checkpoint usable.
Everything loads with torch.load(weights_only=True): tensors, numbers, tuples and dicts only.

DeepSpeed ZeRO-1/2 partitions the optimizer: each rank saves its own partition
(`optim.rank{R}.pt`: the base optimizer's state and the fp32 master partition, tensors only) and
loads it back into its live ZeRO optimizer, whose layout metadata (custom classes that
weights_only refuses) is rebuilt identically by the same config and world size.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from tidal_dist.job import faults
from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import atomic_write_json, atomic_write_text, fsync_dir


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_ZERO_KEYS = ("base_optimizer_state", "base_optimizer_state_step", "single_partition_of_fp32_groups")


def _zero_optimizer(model):
    """The ZeRO optimizer inside a DeepSpeedEngine, or None for DDP / plain models."""
    return model.optimizer if type(model).__name__ == "DeepSpeedEngine" else None


def _save_zero_partition(zero, path: Path) -> None:
    state = zero.state_dict()
    torch.save({k: state[k] for k in _ZERO_KEYS if k in state}, path)


def _load_zero_partition(zero, path: Path, world_size: int) -> None:
    state = zero.state_dict()  # live layout metadata for this config and world size
    state.update(torch.load(path, map_location="cpu", weights_only=True))
    # DeepSpeed picks entry [dp_rank] of the list; every rank passes only its own partition.
    zero.load_state_dict([state] * world_size, load_optimizer_states=True,
                         load_from_fp32_weights=True)


def latest(ckpt_root: Path) -> Path | None:
    pointer = ckpt_root / "latest"
    if not pointer.exists():
        return None
    path = ckpt_root / pointer.read_text().strip()
    return path if (path / "meta.json").exists() else None


def save(acc, model, optimizer, scheduler, td, ckpt_root: Path, epoch: int, step: int,
         sums: torch.Tensor, epochs: list[dict] | None = None, measured=None) -> None:
    """Collective: every rank calls it at the same step boundary. `td` (dynamics.DeviceTD) is
    gathered into the checkpoint's td/ folder by rank 0.

    `sums` are this rank's partial-epoch loss sums; the checkpoint keeps their total over all
    ranks (a resumed epoch's loss must cover every rank's steps, not rank 0's). `epochs` are the
    finished epochs' statistics, so a resumed cycle still reports all of its epochs."""
    name = f"e{epoch:04d}_s{step:06d}"
    total_sums = acc.reduce(sums.detach().clone(), reduction="sum")
    tmp = ckpt_root / f".{name}.partial"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng.rank{acc.process_index}.pt")
    faults.maybe_stall("in_checkpoint", ckpt_root.parent.name)
    zero = _zero_optimizer(model)
    if zero is not None:
        _save_zero_partition(zero, tmp / f"optim.rank{acc.process_index}.pt")
    td.save(tmp / "td")
    if measured is not None:  # training.measure.CandidateMeasurer: rank 0 writes it
        measured.save(tmp / "measured_td")
    acc.wait_for_everyone()
    if acc.is_main_process:
        torch.save({"model": acc.unwrap_model(model).state_dict(),
                    "optimizer": optimizer.state_dict() if zero is None else None,
                    "scheduler": scheduler.state_dict()}, tmp / "train_state.pt")
        atomic_write_json(tmp / "meta.json", {"epoch": epoch, "step": step,
                                              "world_size": acc.num_processes,
                                              "sums": total_sums.cpu().tolist(),
                                              "epochs": list(epochs or [])})
        final = ckpt_root / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(ckpt_root)
        previous = latest(ckpt_root)
        atomic_write_text(ckpt_root / "latest", name + "\n")
        if previous is not None and previous != final:
            shutil.rmtree(previous, ignore_errors=True)
    acc.wait_for_everyone()


def partial_sums(meta: dict, acc) -> torch.Tensor:
    """The interrupted epoch's loss sums to continue from: the all-rank total on rank 0 (the
    epoch's final reduce adds every rank's own), zeros elsewhere."""
    sums = torch.zeros(len(meta["sums"]), dtype=torch.float64, device=acc.device)
    if acc.is_main_process:
        sums += torch.tensor(meta["sums"], dtype=torch.float64, device=acc.device)
    return sums


def describe_resume(meta: dict, acc, cycle: int, path: Path) -> dict:
    """Log where training resumes; a world size other than the checkpoint's is said out loud
    and returned for the cycle's metrics (the visit order of later epochs is the same, but the
    per-rank BatchNorm batches differ unless train.sync_batchnorm is on)."""
    import logging

    log = logging.getLogger("tidal_dist")
    notes: dict = {"resumed_from": {"epoch": meta["epoch"], "step": meta["step"],
                                    "world_size": meta["world_size"]}}
    if acc.is_main_process:
        log.info("cycle %d: resuming at epoch %d, step %d from %s", cycle, meta["epoch"] + 1,
                 meta["step"], path)
    if meta["world_size"] != acc.num_processes:
        notes["world_size_changed"] = {"checkpoint": meta["world_size"], "now": acc.num_processes,
                                       "at_epoch": meta["epoch"]}
        if acc.is_main_process:
            log.warning("cycle %d: the checkpoint was written by %d process(es), this run has %d: "
                        "training continues from epoch %d with the new split; results can differ "
                        "from an uninterrupted %d-process run (recorded in the cycle's metrics)",
                        cycle, meta["world_size"], acc.num_processes, meta["epoch"] + 1,
                        meta["world_size"])
    return notes


def load(acc, model, optimizer, scheduler, path: Path) -> dict:
    """Collective: restore everything saved by `save` except the TD rows (the caller loads them
    from path / "td" into its layout); returns meta (epoch, step, sums, epochs)."""
    meta = json.loads((path / "meta.json").read_text())
    if meta["step"] > 0 and meta["world_size"] != acc.num_processes:
        # Which samples the interrupted epoch still owes depends on how it was split.
        raise UserError(f"checkpoint '{path}' was taken mid-epoch with {meta['world_size']} "
                        f"processes; resume it with {meta['world_size']} (epoch-boundary "
                        f"checkpoints resume with any number)")
    if meta["world_size"] != acc.num_processes:
        # RNG streams are per rank; with another world size every rank takes rank 0's. The
        # augmentation is seeded per visit (data.readers.visit_seed), so it does not change.
        rng_file = path / "rng.rank0.pt"
    else:
        rng_file = path / f"rng.rank{acc.process_index}.pt"
    state = torch.load(path / "train_state.pt", map_location="cpu", weights_only=True)
    acc.unwrap_model(model).load_state_dict(state["model"])
    zero = _zero_optimizer(model)
    if zero is None:
        optimizer.load_state_dict(state["optimizer"])
    elif meta["world_size"] != acc.num_processes:
        raise UserError(f"checkpoint '{path}' holds DeepSpeed ZeRO partitions for "
                        f"{meta['world_size']} processes; resume it with {meta['world_size']}")
    else:
        _load_zero_partition(zero, path / f"optim.rank{acc.process_index}.pt", acc.num_processes)
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    acc.wait_for_everyone()
    return meta
