"""The two augmented views of each image that SimCLR contrasts (Chen et al., ICML 2020, Sec. 3 and
Appendix A), in batched tensor ops on uint8 [B, C, H, W] images (a pool decoded once, as the
device-resident training path does), cheap enough for small grayscale or RGB images on a CPU:

    random resized crop   a box of area fraction s ~ U(min_scale, 1) of the image and aspect ratio
                          r ~ logU(3/4, 4/3), placed uniformly inside it, resampled back to H x W
                          (bilinear; one affine grid per image)
    horizontal flip       with probability 1/2 (folded into the same affine map)
    intensity jitter      brightness x -> x + b, b ~ U(-0.4, 0.4), and contrast
                          x -> mean + c (x - mean), c ~ U(0.6, 1.4), each applied with
                          probability 0.8 (the paper's colour-jitter probability), on [0, 1]
    grayscale             RGB only, with probability 0.2 (the paper's), by luminance

then the dataset's normalisation. The paper's hue/saturation jitter and blur are left out: the
first means nothing for grayscale images, the second is a large cost at 28-32 pixels for little
gain (the paper drops blur for CIFAR-10, Appendix B.9). Draws come from a torch.Generator the
caller seeds, so a run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class ViewSettings:
    min_scale: float = 0.3  # smallest crop area fraction; 0.08 in the paper's ImageNet setting
    brightness: float = 0.4
    contrast: float = 0.4
    jitter_p: float = 0.8
    grayscale_p: float = 0.2


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def augmented_view(images: Tensor, mean: Tensor, std: Tensor, gen: torch.Generator,
                   settings: ViewSettings = ViewSettings()) -> Tensor:
    """One random view of each uint8 [B, C, H, W] image: normalised float32 of the same shape.
    `mean` / `std` are [1, C, 1, 1]. Random draws are made on the CPU from `gen`."""
    b, c = images.shape[:2]
    device = images.device
    x = images.float() / 255.0
    # Random resized crop + flip as one affine map of the output grid onto the input, in
    # affine_grid's [-1, 1] coordinates: a box of width w and height h (fractions of the side)
    # centred at (cx, cy).
    area = _uniform(b, settings.min_scale, 1.0, gen)
    log_ratio = _uniform(b, math.log(3 / 4), math.log(4 / 3), gen)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (2 * torch.rand(b, generator=gen) - 1) * (1 - w)
    cy = (2 * torch.rand(b, generator=gen) - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(device), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    jitter = (torch.rand(b, generator=gen) < settings.jitter_p).float()
    bright = _uniform(b, -settings.brightness, settings.brightness, gen) * jitter
    contrast = 1.0 + _uniform(b, -settings.contrast, settings.contrast, gen) * jitter
    bright, contrast = (t.to(device).view(b, 1, 1, 1) for t in (bright, contrast))
    level = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - level) * contrast + level + bright).clamp_(0.0, 1.0)
    if c == 3 and settings.grayscale_p > 0:
        gray = (torch.rand(b, generator=gen) < settings.grayscale_p).to(device).view(b, 1, 1, 1)
        luminance = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = torch.where(gray, luminance, x)
    return (x - mean) / std
