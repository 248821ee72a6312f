"""Stand-in models for bookkeeping tests: no BatchNorm, so a sample's output does not depend on
the rest of its batch (and therefore not on the world size)."""

import torch
from torch import nn


class LinearTiDAL(nn.Module):
    """logits = W x, td_logits = V x over flattened pixels, as models.Network's output dict. With
    lr=0 its softmax is a fixed function of the image, i.e. of the sample id under
    train_transform=none."""

    def __init__(self, num_pixels: int, num_classes: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.classifier = nn.Linear(num_pixels, num_classes)
        self.td_module = nn.Linear(num_pixels, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.num_classes = num_classes

    def forward(self, x, detach_td: bool = False, detach_loss: bool = False):
        flat = x.flatten(1)
        return {"logits": self.classifier(flat), "td_logits": self.td_module(flat)}
