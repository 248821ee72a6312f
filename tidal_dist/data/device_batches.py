"""The labeled set decoded once per cycle into one uint8 tensor on the device, augmented there.

For small labeled sets (the CIFAR protocols: 1,000-10,000 images, 8-80 steps per epoch) the
per-visit decode + PIL augmentation of the loader path costs far more than the step itself. Here
the images are decoded once (the same PIL decode and resize as the loader path), kept as uint8
[N, C, H, W] on the device, and every step crops, flips and normalises its batch in a few batched
tensor ops: no DataLoader and no host-device transfer inside the step.

Augmentation `crop_flip` has the loader path's semantics (torchvision RandomCrop(size,
padding=p) + RandomHorizontalFlip): zero-pad by p on every side, take an HxW window whose top-left
corner is uniform in [0, 2p] x [0, 2p], flip horizontally with probability 1/2. The draws come
from a counter-based hash of data.readers.visit_seed(epoch seed, epoch, id) (SplitMix64,
Steele et al., OOPSLA 2014), so a visit gets the same crop and flip whatever the batch it lands
in, the world size or a resume; the loader path draws from torch's generator seeded with the same
visit seed, so the two paths have the same distribution but not the same draws.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from tidal_dist.data.readers import RandomAccessReader

DEVICE_KINDS = ("crop_flip", "none")  # what the device path can augment

_M63 = 2**63 - 1


def visit_seeds(epoch_seed: int, epoch: int, ids: np.ndarray) -> np.ndarray:
    """data.readers.visit_seed for many ids at once (uint64, exact)."""
    base = ((epoch_seed * 1_000_003 + epoch) * 10_000_019) % _M63
    return (np.uint64(base) + np.asarray(ids, dtype=np.uint64)) % np.uint64(_M63)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a well-mixed 64-bit hash of each value (wrapping uint64)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def crop_flip_params(seeds: np.ndarray, padding: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top, left, flip) of each visit: offsets uniform in [0, 2 * padding], flip in {0, 1}."""
    h = splitmix64(seeds)
    span = np.uint64(2 * padding + 1)
    top = ((h & np.uint64(0xFFFFF)) % span).astype(np.int64)
    left = (((h >> np.uint64(20)) & np.uint64(0xFFFFF)) % span).astype(np.int64)
    flip = ((h >> np.uint64(63)) & np.uint64(1)).astype(bool)
    return top, left, flip


def crop_flip(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
              padding: int) -> torch.Tensor:
    """uint8 [B, C, H, W] -> the padded-crop-flip of each image, same dtype and shape."""
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    rows = top[:, None] + torch.arange(h, device=images.device)  # [B, H]
    cols = torch.arange(w, device=images.device).expand(b, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + left[:, None]  # [B, W]
    batch = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indices around a slice: the result is [B, H, W, C].
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


class _Decoded(Dataset):
    def __init__(self, reader: RandomAccessReader, ids: np.ndarray) -> None:
        self.reader, self.ids = reader, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        _, image, label = self.reader[int(self.ids[i])]
        return image, label


def decode_into(images: torch.Tensor, rows: np.ndarray, reader: RandomAccessReader, ids: np.ndarray,
                num_workers: int = 0, batch_size: int = 256) -> np.ndarray:
    """Decode `ids` with `reader` (its transform must yield uint8 [C, H, W]) into
    images[rows]; returns their labels (int64, as the shards give them)."""
    reader.check_shards_for(ids)
    loader = DataLoader(_Decoded(reader, ids), batch_size=batch_size, num_workers=num_workers)
    labels = np.empty(len(ids), dtype=np.int64)
    lo = 0
    for batch, batch_labels in loader:
        index = torch.from_numpy(np.asarray(rows[lo:lo + len(batch)])).to(images.device)
        images.index_copy_(0, index, batch.to(images.device))
        labels[lo:lo + len(batch)] = batch_labels.numpy()
        lo += len(batch)
    return labels


class DeviceImages:
    """uint8 [N, C, H, W] of the labeled ids (ascending) on `device`, and the normalisation."""

    def __init__(self, images: torch.Tensor, mean: list[float], std: list[float]) -> None:
        self.images = images
        self.mean = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)

    @staticmethod
    def nbytes(n: int, shape: tuple[int, int, int]) -> int:
        return n * shape[0] * shape[1] * shape[2]

    @classmethod
    def decode(cls, reader: RandomAccessReader, ids: np.ndarray, mean: list[float],
               std: list[float], device: torch.device, num_workers: int = 0,
               batch_size: int = 256) -> "DeviceImages":
        """Decode every id once with `reader` (its transform must yield uint8 [C, H, W])."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            raise ValueError("no labeled ids to decode")
        _, first, _ = reader[int(ids[0])]
        images = torch.empty((len(ids), *first.shape), dtype=torch.uint8, device=device)
        decode_into(images, np.arange(len(ids)), reader, ids, num_workers, batch_size)
        return cls(images, mean, std)

    def batch(self, rows: torch.Tensor, top: torch.Tensor | None = None,
              left: torch.Tensor | None = None, flip: torch.Tensor | None = None,
              padding: int = 0) -> torch.Tensor:
        """Normalised float32 [B, C, H, W] of `rows` (device indices), augmented when given."""
        x = self.images.index_select(0, rows)
        if top is not None:
            x = crop_flip(x, top, left, flip, padding)
        return (x.float() / 255.0 - self.mean) / self.std
