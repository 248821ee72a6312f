"""Where a cycle's training batches come from: the loader path or the device-resident path.

    loader   DataLoader over RandomAccessReader: decode + augment per visit on the CPU, in loader
             workers (any dataset size, any train transform)
    device   the labeled set decoded once into one uint8 tensor on the device
             (data/device_batches.py): crop/flip/normalise in batched tensor ops, no DataLoader

`train.data_path=auto` takes the device path when the decoded set fits
`train.device_data_budget_mb` and the train transform is one it can do (crop_flip, none);
random_resized_crop needs a per-image resize of a variable-sized source, so it stays on the
loader path (a log line says so). Both yield, per step, the images of the rank's next batch
positions; ids, labels and the valid mask come from the epoch's assignment, not from here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from tidal_dist.data.device_batches import DEVICE_KINDS, DeviceImages, crop_flip_params, visit_seeds
from tidal_dist.data.readers import LabeledDataset, RandomAccessReader, VisitSampler
from tidal_dist.data.transforms import build_decode
from tidal_dist.job.errors import UserError

log = logging.getLogger("tidal_dist")


def decoded_shape(manifest, image_size: int | None) -> tuple[int, int, int]:
    channels = 1 if manifest.mode == "L" else 3
    if image_size is not None:
        return channels, image_size, image_size
    if manifest.image_size is None:
        raise UserError(f"dataset '{manifest.dataset}': its images have different sizes, set "
                        f"data.image_size (e.g. 224)")
    return channels, *manifest.image_size


def choose_path(cfg, manifest, num_labeled: int) -> tuple[str, str]:
    """('device' | 'loader', why) for this cycle."""
    wanted = cfg.train.data_path
    if wanted == "loader":
        return "loader", "train.data_path=loader"
    kind = cfg.data.train_transform
    if kind not in DEVICE_KINDS:
        return "loader", (f"train transform '{kind}' is not available on the device path "
                          f"(it does {', '.join(DEVICE_KINDS)}): using the loader path")
    fits, why = fits_device(cfg, manifest, num_labeled, "labeled set")
    if not fits:
        if wanted == "device":
            raise UserError(f"config key 'train.data_path': device path asked for, but {why}")
        return "loader", why + ": using the loader path"
    return "device", why


def fits_device(cfg, manifest, num_images: int, what: str) -> tuple[bool, str]:
    """(whether `num_images` decoded images fit train.device_data_budget_mb, why)."""
    size = DeviceImages.nbytes(num_images, decoded_shape(manifest, cfg.data.image_size))
    if size > cfg.train.device_data_budget_mb * 2**20:
        return False, (f"the decoded {what} ({size / 2**20:,.0f} MiB) exceeds "
                       f"train.device_data_budget_mb={cfg.train.device_data_budget_mb}")
    return True, f"decoded {what} {size / 2**20:,.1f} MiB on the device"


def decode_reader(cfg, manifest, split: str = "pool") -> RandomAccessReader:
    """Random access to `split` yielding uint8 [C, H, W] (data.transforms.build_decode): what
    every device-resident copy of images is decoded with."""
    return RandomAccessReader(cfg.data.root, split, build_decode(manifest, cfg.data.image_size,
                                                                 cfg.data.interpolation),
                              verify=cfg.data.verify_shards, shard_url=cfg.data.shard_url,
                              cache_dir=cfg.data.cache_dir)


def decode_on_device(session, ids: np.ndarray) -> DeviceImages:
    """The pool images of `ids` (ascending), decoded once into uint8 on the session's device."""
    cfg = session.cfg
    reader = decode_reader(cfg, session.manifest)
    try:
        return DeviceImages.decode(reader, ids, session.manifest.mean, session.manifest.std,
                                   session.device, num_workers=cfg.data.num_workers)
    finally:
        reader.close()


class LoaderBatches:
    """The loader path: one DataLoader per cycle, persistent workers, per-visit seeded transform."""

    kind = "loader"

    def __init__(self, session, labeled_ids: np.ndarray, batch: int) -> None:
        self.session, self.batch = session, batch
        self.sampler = VisitSampler()
        workers = session.cfg.data.num_workers
        from tidal_dist.job.preemption import loader_worker_init

        self.loader = DataLoader(LabeledDataset(session.reader(), labeled_ids), batch_size=batch,
                                 sampler=self.sampler, num_workers=workers,
                                 persistent_workers=workers > 0,
                                 pin_memory=torch.cuda.is_available(),
                                 # survive a process group's stop signal, hand it to the rank
                                 worker_init_fn=loader_worker_init)

    def epoch(self, rank_ids: np.ndarray, valid: np.ndarray, epoch_seed: int, epoch: int,
              skip: int, model) -> Iterator[torch.Tensor]:
        lo = skip * self.batch
        self.sampler.set_epoch(rank_ids[lo:], valid[lo:], epoch_seed, epoch)
        for ids, x, _, _ in self.loader:
            if not np.array_equal(ids.numpy(), rank_ids[lo:lo + len(ids)]):
                raise RuntimeError("the training loader delivered ids out of visit order")
            lo += len(ids)
            yield self.session.to_device(x, model)


class DeviceBatches:
    """The device-resident path (data/device_batches.py)."""

    kind = "device"

    def __init__(self, session, labeled_ids: np.ndarray, batch: int) -> None:
        cfg = session.cfg
        self.session, self.batch, self.ids = session, batch, labeled_ids
        self.augment = cfg.data.train_transform == "crop_flip"
        self.padding = cfg.data.crop_padding
        self.images = decode_on_device(session, labeled_ids)

    def epoch(self, rank_ids: np.ndarray, valid: np.ndarray, epoch_seed: int, epoch: int,
              skip: int, model) -> Iterator[torch.Tensor]:
        device = self.session.device
        rows = torch.from_numpy(np.searchsorted(self.ids, rank_ids)).to(device)
        if self.augment:
            top, left, flip = (torch.from_numpy(a).to(device) for a in
                               crop_flip_params(visit_seeds(epoch_seed, epoch, rank_ids), self.padding))
        for lo in range(skip * self.batch, len(rank_ids), self.batch):
            hi = lo + self.batch
            if self.augment:
                x = self.images.batch(rows[lo:hi], top[lo:hi], left[lo:hi], flip[lo:hi], self.padding)
            else:
                x = self.images.batch(rows[lo:hi])
            yield self.session.to_device(x, model)


def build_batches(session, labeled_ids: np.ndarray, batch: int, announce: bool):
    path, why = choose_path(session.cfg, session.manifest, len(labeled_ids))
    if announce:
        log.info("training data: %s path (%s)", path, why)
    cls = DeviceBatches if path == "device" else LoaderBatches
    return cls(session, labeled_ids, batch)
