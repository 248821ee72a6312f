"""A split's images decoded once per process, on demand, into one uint8 tensor on the device.

Evaluation, scoring and the measured-TD passes (training/inference.py) read the same images every
cycle: the whole test split, the validation hold-out, candidate subsets redrawn from one pool. On
the streamed path each pass reads the shards and decodes every image again; at the CIFAR and
Fashion-MNIST protocols that costs several times the forward pass itself. Here the first pass
that asks for an id decodes it (the same PIL decode and resize as the `none` eval transform, with
data/device_batches.py's normalisation, so a batch is the streamed path's batch to the bit) into
its row of a tensor sized for the whole split; later passes only index it.

Which path a split takes (`choose_split_path`, logged once per split by the session):
    decoded   train.data_path auto or device, data.eval_transform `none`, and the whole split,
              decoded, within train.device_data_budget_mb
    streamed  otherwise: data.readers.StreamingDataset at every pass
Each rank takes the same share of a pass's ids on both paths (StreamingDataset's split without
loader workers), so only where the images come from differs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from tidal_dist.data.device_batches import DeviceImages, decode_into
from tidal_dist.data.readers import StreamingDataset, select_ids
from tidal_dist.data.train_batches import decode_reader, decoded_shape, fits_device


def choose_split_path(cfg, manifest, split: str) -> tuple[str, str]:
    """('decoded' | 'streamed', why) for passes over `split`."""
    if cfg.train.data_path == "loader":
        return "streamed", "train.data_path=loader"
    if cfg.data.eval_transform != "none":
        return "streamed", f"eval transform '{cfg.data.eval_transform}' is not kept decoded"
    fits, why = fits_device(cfg, manifest, manifest.split(split).num_samples, f"{split} split")
    return ("decoded", why) if fits else ("streamed", why + ": streaming it")


class DecodedSplit:
    """Rows of one split (row = id - first id), decoded the first time a pass asks for them."""

    def __init__(self, cfg, manifest, split: str, device: torch.device) -> None:
        self.info = manifest.split(split)
        self.reader = decode_reader(cfg, manifest, split)
        shape = decoded_shape(manifest, cfg.data.image_size)
        images = torch.zeros((self.info.num_samples, *shape), dtype=torch.uint8, device=device)
        self.images = DeviceImages(images, manifest.mean, manifest.std)
        self.labels = np.full(self.info.num_samples, -1, dtype=np.int64)
        self.have = np.zeros(self.info.num_samples, dtype=bool)
        self.num_workers = cfg.data.num_workers

    def share(self, ids: np.ndarray | None, rank: int, world_size: int) -> np.ndarray:
        """This rank's ids of a pass over `ids` (None: the whole split): as StreamingDataset
        assigns them with no loader workers."""
        return StreamingDataset.assigned_ids(select_ids(self.info, ids), rank, world_size, 0)[0]

    def batches(self, ids: np.ndarray, batch_size: int,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(ids, labels, normalised float32 images) of `ids` (ascending), `batch_size` at a time;
        ids not decoded yet are decoded first."""
        rows = ids - self.info.first_id
        missing = ~self.have[rows]
        if missing.any():
            self.labels[rows[missing]] = decode_into(self.images.images, rows[missing], self.reader,
                                                     ids[missing], self.num_workers)
            self.have[rows[missing]] = True
        device_rows = torch.from_numpy(rows).to(self.images.images.device)
        for lo in range(0, len(ids), batch_size):
            hi = lo + batch_size
            yield (torch.from_numpy(ids[lo:hi]), torch.from_numpy(self.labels[rows[lo:hi]]),
                   self.images.batch(device_rows[lo:hi]))

    def close(self) -> None:
        self.reader.close()
