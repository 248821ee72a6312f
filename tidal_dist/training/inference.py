"""Eval-mode forward passes over a split, sharded across ranks: shared by evaluation and scoring.

Each rank streams its own share (data.readers.StreamingDataset, exactly once over ranks x loader
workers) through the unwrapped model: DDP's forward may broadcast buffers, a collective that would
deadlock when ranks run different numbers of batches. No collective runs inside the loop.
A split the session keeps decoded on the device (data/decoded_split.py: the test split, the
pool's hold-out and candidates at CIFAR scale) is read from there instead of the shards: the same
shares and batches, without a read or a decode per pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from tidal_dist.data.readers import StreamingDataset, stream_loader
from tidal_dist.data.tensor_decode import TensorDecoder, collate_raw, raw_bytes, use_tensor_decode
from tidal_dist.data.transforms import build_transform
from tidal_dist.job import faults, preemption


def predict(session, split: str, batch_size: int, ids: np.ndarray | None = None, forward=None,
            reference: torch.nn.Module | None = None, reuse: bool = True,
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield (ids, labels, outputs) for this rank's share of `split` (or of `ids`): outputs is the
    network's dict (logits, embedding, td_logits, loss_pred as it has them), float32 on the
    device; ids and labels stay on the CPU. With `reference` (a second network, in eval mode on
    the same device), outputs also holds its logits on the same batch as "reference_logits".
    `reuse=False` always streams: a single pass (tidal-dist predict) has nothing to reuse, and its
    memory stays flat at any pool size."""
    cfg, acc = session.cfg, session.accelerator
    decoded = session.decoded_split(split) if reuse else None
    if decoded is not None:  # decoded once per process (data/decoded_split.py)
        share = decoded.share(ids, acc.process_index, acc.num_processes)
        yield from _forward_batches(session, decoded.batches(share, batch_size), forward, reference)
        return
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
