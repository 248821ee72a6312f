"""The optimizer and LR schedule of one cycle (fresh every cycle: tidal-method.md), from
train.optimizer / train.schedule / train.warmup_epochs. The schedule steps once per epoch.

    sgd + step     the paper's protocol (Kye et al. 2023, after Yoo & Kweon 2019): SGD with
                   momentum, LR x lr_gamma at the fractions train.lr_decay_at of train.epochs
    adamw          decoupled weight decay (Loshchilov & Hutter 2019, "Decoupled Weight Decay
                   Regularization"), betas (0.9, 0.999)
    cosine         lr_e = lr * (1 + cos(pi * (e - w) / (E - w))) / 2 after the warm-up
                   (Loshchilov & Hutter 2017, "SGDR", without restarts)
    warmup_epochs  w: lr_e = lr * (e + 1) / (w + 1) for e < w (linear; Goyal et al. 2017,
                   "Accurate, Large Minibatch SGD"), before either schedule

Only parameters that require a gradient are optimised: with train.freeze=backbone that is the
classifier and the heads (models/network.py).
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from tidal_dist.config import Config


def lr_factor(cfg: Config, epoch: int) -> float:
    """The LR of `epoch` (0-based) as a multiple of train.lr."""
    t = cfg.train
    w = t.warmup_epochs
    if epoch < w:
        return (epoch + 1) / (w + 1)
    if t.schedule == "cosine":
        span = max(t.epochs - w, 1)
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - w) / span))
    milestones = sorted({max(1, round(f * t.epochs)) for f in t.lr_decay_at})
    return t.lr_gamma ** bisect.bisect_right(milestones, epoch)


def build_optimizer(cfg: Config, model: nn.Module) -> tuple[torch.optim.Optimizer, object]:
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=t.lr,
                                                       weight_decay=t.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.schedule == "step" and t.warmup_epochs == 0:
        # the protocol's scheduler, as before (its checkpoints keep loading)
        milestones = sorted({max(1, round(f * t.epochs)) for f in t.lr_decay_at})
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones,
                                                         gamma=t.lr_gamma)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: lr_factor(cfg, epoch))
