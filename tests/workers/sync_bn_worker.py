"""Run under torchrun by tests/models/test_sync_batchnorm.py: one GlobalBatchNorm2d training step on this rank's
slice of a seeded global batch.

usage: sync_bn_worker.py OUT GLOBAL_BATCH
Rank 0 writes OUT/sync_bn.npz: the outputs and input gradients of every rank (in batch order),
the weight / bias gradients summed over ranks, and the running statistics after the step.
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tidal_dist.models.sync_batchnorm import convert_batchnorm  # noqa: E402


def main() -> None:
    out, batch = Path(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)  # the same draws, in the same order, as the test
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(3, generator=g) + 0.5)
        bn.bias.copy_(torch.rand(3, generator=g))
    x = torch.randn(batch, 3, 5, 4, generator=g) * 2 + 5
    upstream = torch.randn(batch, 3, 5, 4, generator=g)
    bn = convert_batchnorm(torch.nn.Sequential(bn))[0].train()
    rows = slice(rank * batch // world, (rank + 1) * batch // world)
    mine = x[rows].clone().requires_grad_()
    y = bn(mine)
    (y * upstream[rows]).sum().backward()
    grads = torch.stack([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)
    ys = [torch.zeros_like(y.detach()) for _ in range(world)]
    gxs = [torch.zeros_like(mine.grad) for _ in range(world)]
    dist.all_gather(ys, y.detach().contiguous())
    dist.all_gather(gxs, mine.grad.contiguous())
    if rank == 0:
        np.savez(out / "sync_bn.npz", y=torch.cat(ys).numpy(), grad_x=torch.cat(gxs).numpy(),
                 grad_w=grads[0].numpy(), grad_b=grads[1].numpy(),
                 running_mean=bn.running_mean.numpy(), running_var=bn.running_var.numpy())
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
