"""Run under torchrun by tests/dynamics/test_state.py: drive dynamics.DeviceTD through EPOCHS epochs
with deterministic stand-in probabilities (a function of id and epoch), on gloo.

usage: dynamics_worker.py OUT N C EPOCHS BATCH [crash_epoch]
Every rank checks its targets against the expected running mean and writes
OUT/targets_ok.rank{R}; rank 0 writes OUT/td (the committed buffers) and OUT/epochs/.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tidal_dist.data.readers import epoch_assignment  # noqa: E402
from tidal_dist.dynamics.state import DeviceTD, EpochLayout  # noqa: E402


def probs_of(ids: np.ndarray, epoch: int, c: int) -> np.ndarray:
    """A softmax row per (id, epoch), the same on every rank."""
    logits = np.sin(np.outer(ids + 1, np.arange(1, c + 1)) * 0.37 + epoch * 1.3)
    e = np.exp(logits)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def main() -> None:
    out, n, c, epochs, batch = Path(sys.argv[1]), *map(int, sys.argv[2:6])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ids = np.arange(n, dtype=np.int64) * 3 + 7  # not 0..n-1: rows and ids must not be confused
    labels = ids % c
    seed = 11
    td = DeviceTD(ids, c, EpochLayout(n, 0, seed, world, batch), rank, torch.device("cpu"),
                  record_epoch_probs=True)
    ok = True
    for epoch in range(epochs):
        rank_ids, valid = epoch_assignment(ids, epoch, seed, rank, world, batch_size=batch)
        for lo in range(0, len(rank_ids), batch):
            bid, bv = rank_ids[lo:lo + batch], valid[lo:lo + batch]
            p = torch.from_numpy(probs_of(bid, epoch, c))
            expected = (sum(probs_of(bid, e, c) for e in range(epoch)) + p.numpy()) / (epoch + 1)
            got = td.targets(lo, p).numpy()
            ok &= bool(np.allclose(got[bv], expected[bv], rtol=1e-5, atol=1e-6))
            td.record(lo, p, torch.from_numpy(labels[np.searchsorted(ids, bid)]), torch.from_numpy(bv))
        td.write_epoch_probs(out / "epochs" / f"probs_e{epoch:04d}.npy")
        if epoch + 1 < epochs:
            td.advance()
    td.save(out / "td")
    (out / f"targets_ok.rank{rank}").write_text(str(ok))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
