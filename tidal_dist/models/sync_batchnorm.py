"""BatchNorm over the global batch, on any device: the option `train.sync_batchnorm`.

With DDP each rank normalises its own slice of the global batch, so BatchNorm statistics (and
through them the loss, the TD records, accuracy and selections) depend on how many processes
share the batch. Synchronised BatchNorm (Ioffe & Szegedy 2015's batch statistics, computed over
the whole global batch as in Peng et al. 2018, "MegDet", cross-GPU BN) removes that dependence.
torch.nn.SyncBatchNorm only runs on CUDA tensors, so this module does the same on CPU and GPU:

    in training mode, per channel c, over every rank's (N, H, W) positions:
        shift  = running_mean[c]             (identical on all ranks; keeps E[x^2]-E[x]^2 stable)
        s1, s2 = sum(x - shift), sum((x - shift)^2), and the count n      -> one all-reduce (sum)
                 (from this rank's fused var_mean: s1 = n(m - shift), s2 = n(v + (m - shift)^2))
        mean   = shift + s1/n,   var = s2/n - (s1/n)^2                     (biased, as BatchNorm)
        y      = (x - mean) / sqrt(var + eps) * weight + bias              (one multiply-add)
    running_mean/var are updated like nn.BatchNorm2d (unbiased variance n/(n-1)).

The all-reduce is differentiable (its backward all-reduces the gradients), so each rank's input
gradient includes every rank's loss through the shared statistics, which is the gradient of the
global-batch objective once DDP averages over ranks. Eval mode uses the running statistics and no
collective. The statistics are reduced in float64 (2C+1 numbers per layer: negligible).

Cost: one small all-reduce per BatchNorm layer per training forward (and one in backward), and
the unfused arithmetic keeps a few activation-sized temporaries; see docs/launching.md.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum every rank holds is the sum of their gradients."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # noqa: ARG004
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ARG004
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics cover every rank's batch. Same parameters and
    buffers (state_dicts load both ways)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a 4-D input (N, C, H, W), got {x.dim()}-D")
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        channels = x.shape[1]
        shape = (1, channels, 1, 1)
        xf = x.float()
        # This rank's statistics in one fused op, turned into shifted sums that add up over
        # ranks: s1 = n (mean - K), s2 = n (var + (mean - K)^2), K = running_mean (the same on
        # every rank, close to the batch mean, so s2/n - (s1/n)^2 does not cancel badly).
        var_local, mean_local = torch.var_mean(xf, dim=(0, 2, 3), correction=0)
        count = float(xf.numel() // channels)
        if self.track_running_stats:
            shift = self.running_mean.detach().double()
        else:
            shift = torch.zeros(channels, dtype=torch.float64, device=x.device)
        centred = mean_local.double() - shift
        stats = torch.cat([count * centred, count * (var_local.double() + centred * centred),
                           torch.full((1,), count, dtype=torch.float64, device=x.device)])
        if _distributed():
            stats = _AllReduceSum.apply(stats)
        n = stats[-1]
        m1 = stats[:channels] / n
        var = (stats[channels:2 * channels] / n - m1 * m1).clamp_min(0.0)
        mean = m1 + shift
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.detach())
        # y = (x - mean) / sqrt(var + eps) * weight + bias, as one multiply-add per element.
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.double()
        offset = -mean * scale
        if self.affine:
            offset = offset + self.bias.double()
        y = torch.addcmul(offset.float().view(shape), xf, scale.float().view(shape))
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        self.num_batches_tracked += 1
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm2d
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var * (n / (n - 1))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every nn.BatchNorm2d in `module` (in place, recursively) by a GlobalBatchNorm2d
    with the same settings, parameters and buffers; returns `module` (or its replacement)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        new = GlobalBatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum,
                                affine=module.affine, track_running_stats=module.track_running_stats,
                                device=module.weight.device if module.affine else None)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_batchnorm(child))
    return module
