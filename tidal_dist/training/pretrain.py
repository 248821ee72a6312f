"""`tidal-dist pretrain`: SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020) on the unlabeled
pool's images, so a cold start with no pretrained weights can still embed the pool, as TypiClust
(Hacohen et al., ICML 2022, Sec. 4: SimCLR trained on the unlabeled set) does before choosing
its initial set (`al.initial_strategy=typiclust`).

    the pool's images, decoded once into one uint8 tensor (data/device_batches.py), labels never read
    per step: two views of each image of the batch (data/contrastive_views.py)
              -> backbone's pooled embedding h -> projection head z = g(h) (models/projection_head.py)
              -> NT-Xent over the 2N projections (objectives/nt_xent.py)
    optimiser: Adam with a cosine decay to 0 over all steps (the small-batch substitute for the
               paper's LARS, which it needs for batches of 4,096)
    output:    the backbone's state_dict (`models.weights_module`: the keys `model.weights` loads,
               classifier included: its fresh init, replaced by every run's training), safetensors,
               written atomically; next to it OUT.pretrain.json, the record (settings, the
               loss of every epoch, seconds)

One process (a CPU or one GPU): no distributed launch. Resumable: after every epoch the model,
head, optimiser and the losses so far are saved atomically to OUT.resume.pt (torch.load with
weights_only=True); the same command continues from the last finished epoch (the checkpoint
of other settings is refused, never overwritten), and the file is removed once OUT is written.
An epoch's order and augmentation draws are seeded by (seed, epoch), so a resumed run draws what
an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tidal_dist.config import Config
from tidal_dist.data.contrastive_views import ViewSettings, augmented_view
from tidal_dist.data.device_batches import DeviceImages
from tidal_dist.data.manifest import load_manifest
from tidal_dist.data.readers import RandomAccessReader
from tidal_dist.data.train_batches import decoded_shape
from tidal_dist.data.transforms import build_decode
from tidal_dist.job.errors import UserError
from tidal_dist.job.faults import maybe_crash_in_epoch
from tidal_dist.job.fsutil import atomic_write, atomic_write_bytes, atomic_write_json
from tidal_dist.models.backbones import build_backbone, weights_module
from tidal_dist.models.projection_head import ProjectionHead
from tidal_dist.objectives.nt_xent import nt_xent
from tidal_dist.training.runtime import seed_everything

log = logging.getLogger("tidal_dist")


@dataclass(frozen=True)
class PretrainSettings:
    epochs: int = 20
    batch_size: int = 256  # pairs per step: 2 x 256 views, 510 negatives per row
    temperature: float = 0.5  # the paper's best for its CIFAR-10 runs (Appendix B.9)
    lr: float = 1e-3
    weight_decay: float = 1e-6
    seed: int = 0


def record_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".pretrain.json")


def resume_path(out: Path) -> Path:
    return out.with_name(out.name + ".resume.pt")


def fingerprint(cfg: Config, ids: np.ndarray, settings: PretrainSettings) -> str:
    """What a checkpoint or a finished output must share with this command to be continued or
    accepted: the data, the backbone, the images and the settings."""
    what = {"data.root": str(Path(cfg.data.root).resolve()), "image_size": cfg.data.image_size,
            "mean": cfg.data.mean, "std": cfg.data.std, "backbone": cfg.model.backbone,
            "width": cfg.model.width, "weights": cfg.model.weights, **asdict(settings),
            "ids": hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def decode_pool(cfg: Config, ids: np.ndarray, device: torch.device) -> DeviceImages:
    manifest = load_manifest(cfg.data.root)
    shape = decoded_shape(manifest, cfg.data.image_size)
    size = DeviceImages.nbytes(len(ids), shape)
    budget = cfg.train.device_data_budget_mb * 2**20
    if size > budget:
        raise UserError(f"pretrain: the {len(ids):,} pool images decode to {size / 2**20:,.0f} MiB, "
                        f"over train.device_data_budget_mb={cfg.train.device_data_budget_mb}; "
                        f"pass --max-images N (a seeded sample of the pool) or raise the budget")
    reader = RandomAccessReader(cfg.data.root, "pool",
                                build_decode(manifest, cfg.data.image_size, cfg.data.interpolation),
                                verify=cfg.data.verify_shards, shard_url=cfg.data.shard_url,
                                cache_dir=cfg.data.cache_dir)
    try:
        return DeviceImages.decode(reader, ids, cfg.data.mean or manifest.mean,
                                   cfg.data.std or manifest.std, device)
    finally:
        reader.close()


def _finished_record(out: Path) -> dict | None:
    try:
        record = json.loads(record_path(out).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _cosine_lr(base: float, step: int, total: int) -> float:
    return 0.5 * base * (1.0 + math.cos(math.pi * step / max(total, 1)))


def pretrain(cfg: Config, ids: np.ndarray, out: Path, settings: PretrainSettings) -> dict:
    """Train, write OUT and its record; returns the record. `ids`: the pool ids to learn from."""
    out = Path(out)
    key = fingerprint(cfg, ids, settings)
    if len(ids) < settings.batch_size:
        raise UserError(f"pretrain: --batch-size {settings.batch_size} exceeds the {len(ids)} "
                        f"pool images; lower it")
    checkpoint = resume_path(out)
    if out.exists() and not checkpoint.exists():
        done = _finished_record(out)
        if done is not None and done.get("fingerprint") == key:
            log.info("pretrain: %s is already written by this command (%s); nothing to do", out,
                     record_path(out))
            return done
        raise UserError(f"pretrain: --out '{out}' already exists and was not written by this "
                        f"command (same data, backbone and settings); choose another --out or "
                        f"delete it")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    manifest = load_manifest(cfg.data.root)
    channels = 1 if manifest.mode == "L" else 3
    seed_everything(settings.seed, cfg.run.deterministic)
    backbone = build_backbone(cfg.model, manifest.num_classes, channels).to(device)
    head = ProjectionHead(backbone.embedding_dim).to(device)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = len(ids) // settings.batch_size  # the last partial batch is dropped
    total = steps_per_epoch * settings.epochs

    losses: list[float] = []
    seconds = 0.0
    if checkpoint.exists():
        try:
            state = torch.load(checkpoint, map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several types for damaged files
            raise UserError(f"pretrain: checkpoint '{checkpoint}' cannot be read ({e}); delete "
                            f"it to start over") from None
        if state.get("fingerprint") != key:
            raise UserError(f"pretrain: checkpoint '{checkpoint}' was written by a pretrain with "
                            f"other data, backbone or settings; run that command again to finish "
                            f"it, or delete the checkpoint to start over")
        backbone.load_state_dict(state["backbone"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        losses, seconds = list(state["losses"]), float(state["seconds"])
        log.info("pretrain: resuming after epoch %d of %d from %s", len(losses), settings.epochs,
                 checkpoint)

    started = time.monotonic()
    images = decode_pool(cfg, ids, device)
    log.info("pretrain: %s images of %s decoded in %.1f s; SimCLR on %s, %d epochs of %d steps "
             "(batch %d pairs, temperature %g)", f"{len(ids):,}", cfg.data.root,
             time.monotonic() - started, cfg.model.backbone, settings.epochs, steps_per_epoch,
             settings.batch_size, settings.temperature)
    views = ViewSettings()
    backbone.train()
    head.train()
    for epoch in range(len(losses), settings.epochs):
        t0 = time.monotonic()
        gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        order = torch.randperm(len(ids), generator=gen).to(device)
        # summed on the device: one host sync per epoch, not per step
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        for step in range(steps_per_epoch):
            maybe_crash_in_epoch(epoch, step)  # resume tests only
            lr = _cosine_lr(settings.lr, epoch * steps_per_epoch + step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rows = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            batch = images.images.index_select(0, rows)
            both = torch.cat([augmented_view(batch, images.mean, images.std, gen, views),
                              augmented_view(batch, images.mean, images.std, gen, views)])
            embedding, _ = backbone.features(both)
            z = head(embedding)
            loss = nt_xent(z[:len(rows)], z[len(rows):], settings.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach()
        losses.append(total_loss.item() / steps_per_epoch)
        seconds += time.monotonic() - t0
        log.info("pretrain: epoch %d/%d  NT-Xent %.4f  (%.1f s)", epoch + 1, settings.epochs,
                 losses[-1], time.monotonic() - t0)
        state = {"fingerprint": key, "backbone": backbone.state_dict(), "head": head.state_dict(),
                 "optimizer": optimizer.state_dict(), "losses": losses, "seconds": seconds}
        atomic_write(checkpoint, lambda f: torch.save(state, f))

    from safetensors.torch import save

    weights = {k: v.detach().cpu().contiguous().clone()
               for k, v in weights_module(backbone).state_dict().items()}
    atomic_write_bytes(out, save(weights, metadata={"format": "pt", "written_by": "tidal-dist pretrain"}))
    record = {"fingerprint": key, "weights": str(out), "data.root": cfg.data.root,
              "backbone": cfg.model.backbone, "images": int(len(ids)),
              "settings": asdict(settings), "steps_per_epoch": steps_per_epoch,
              "epoch_losses": losses, "train_seconds": round(seconds, 1)}
    atomic_write_json(record_path(out), record)
    checkpoint.unlink(missing_ok=True)
    log.info("pretrain: wrote %s (%d tensors) and %s", out, len(weights), record_path(out))
    return record
