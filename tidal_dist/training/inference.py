"""Eval-mode forward passes over a split, sharded across ranks: shared by evaluation and scoring.

Each rank streams its own share (data.readers.StreamingDataset, exactly once over ranks x loader
workers) through the unwrapped model: DDP's forward may broadcast buffers, a collective that would
deadlock when ranks run different numbers of batches. No collective runs inside the loop.
`predict_decoded` runs the same loop over images already decoded on the device (the measured-TD
candidates, decoded once per cycle rather than streamed at every measurement).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from tidal_dist.data.device_batches import DeviceImages
from tidal_dist.data.readers import StreamingDataset, stream_loader
from tidal_dist.data.tensor_decode import TensorDecoder, collate_raw, raw_bytes, use_tensor_decode
from tidal_dist.data.transforms import build_transform
from tidal_dist.job import faults, preemption


def predict(session, split: str, batch_size: int, ids: np.ndarray | None = None, forward=None,
            reference: torch.nn.Module | None = None,
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield (ids, labels, outputs) for this rank's share of `split` (or of `ids`): outputs is the
    network's dict (logits, embedding, td_logits, loss_pred as it has them), float32 on the
    device; ids and labels stay on the CPU. With `reference` (a second network, in eval mode on
    the same device), outputs also holds its logits on the same batch as "reference_logits"."""
    cfg, acc = session.cfg, session.accelerator
    decoder = None
    if use_tensor_decode(cfg.data.decode, session.manifest, acc.device.type == "cuda"):
        # Loader workers only read bytes; the batch is decoded on the device (tensor_decode.py).
        decoder = TensorDecoder(session.manifest, cfg.data.eval_transform, cfg.data.image_size,
                                acc.device, interpolation=cfg.data.interpolation)
        transform = raw_bytes
    else:
        transform = build_transform(cfg.data.eval_transform, session.manifest, train=False,
                                    image_size=cfg.data.image_size,
                                    interpolation=cfg.data.interpolation)
    dataset = StreamingDataset(cfg.data.root, split, transform, ids=ids, rank=acc.process_index,
                               world_size=acc.num_processes, verify=cfg.data.verify_shards,
                               shard_url=cfg.data.shard_url, cache_dir=cfg.data.cache_dir)
    loader = stream_loader(dataset, batch_size, cfg.data.num_workers,
                           collate=collate_raw if decoder else None)
    batches = ((ids_, y, decoder(x) if decoder else x) for ids_, x, y in loader)
    yield from _forward_batches(session, batches, forward, reference)


def predict_decoded(session, images: DeviceImages, ids: np.ndarray, batch_size: int,
                    ) -> Iterator[tuple[torch.Tensor, None, dict[str, torch.Tensor]]]:
    """Yield (ids, None, outputs) for `ids` (ascending) whose images are already decoded on the
    device (`images` holds exactly these ids, in this order), in batches of `batch_size`: the
    eval transform `none` without reading a shard (training/measure.py, once per cycle)."""
    batches = ((torch.from_numpy(ids[lo:lo + batch_size]), None,
                images.batch(torch.arange(lo, min(lo + batch_size, len(ids)),
                                          device=images.images.device)))
               for lo in range(0, len(ids), batch_size))
    yield from _forward_batches(session, batches, None, None)


def _forward_batches(session, batches, forward, reference):
    """The eval-mode loop shared by both: unwrapped model, inference mode, a stop request ends it."""
    acc = session.accelerator
    model = acc.unwrap_model(session.model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch_ids, y, x in batches:
                if preemption.requested():
                    break  # the caller agrees on the stop with the other ranks after its loop
                faults.maybe_slow("inference")
                with acc.autocast():
                    x = session.to_device(x, model)
                    out = model(x) if forward is None else forward(model, x)
                    if reference is not None:
                        out["reference_logits"] = reference(x)["logits"]
                yield batch_ids, y, {name: value.float() for name, value in out.items()}
    finally:
        model.train(was_training)
