"""Image bytes -> normalised float tensor [C, H, W], with the augmentations of the protocols.

    train: crop_flip            zero-pad by crop_padding, random crop back to the size, random h-flip
                                (CIFAR / Fashion-MNIST protocol)
           random_resized_crop  RandomResizedCrop(image_size) + random h-flip (ImageNet protocol)
           none                 decode and normalise only
    eval:  none
           resize_center_crop   resize the short side to image_size * 8/7 (256 for 224), center crop

`image_size` defaults to the manifest's fixed size; variable-sized datasets (imagefolder) need it
for every kind, because batches need one size. Normalisation uses the manifest's mean / std (a run
with data.mean / data.std set gets a manifest carrying those); resizes use data.interpolation.
The transform is a plain object of torchvision transforms, so it pickles into DataLoader workers.
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torchvision import transforms as T

from tidal_dist.data.manifest import Manifest
from tidal_dist.job.errors import UserError

TRAIN_KINDS = ("crop_flip", "random_resized_crop", "none")
EVAL_KINDS = ("none", "resize_center_crop")


class ImageTransform:
    """Callable bytes -> tensor. `mode` is the PIL mode every image is converted to."""

    def __init__(self, mode: str, pipeline: T.Compose) -> None:
        self.mode = mode
        self.pipeline = pipeline

    def __call__(self, data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as image:
            return self.pipeline(image.convert(self.mode))

    def __repr__(self) -> str:
        return f"ImageTransform(mode={self.mode!r}, {self.pipeline!r})"


def _target_size(kind: str, manifest: Manifest, image_size: int | None) -> tuple[int, int] | int:
    if image_size is not None:
        if image_size < 1:
            raise UserError(f"data.image_size must be >= 1 (got {image_size})")
        return image_size
    if manifest.image_size is None:
        raise UserError(f"transform '{kind}' on dataset '{manifest.dataset}': its images have "
                        f"different sizes, set data.image_size (e.g. 224)")
    return manifest.image_size


def _filter(interpolation: str | None) -> T.InterpolationMode:
    """data.interpolation (None: bilinear, torchvision's default) as torchvision's mode."""
    return T.InterpolationMode(interpolation or "bilinear")


def build_transform(kind: str, manifest: Manifest, train: bool, crop_padding: int = 4,
                    image_size: int | None = None,
                    interpolation: str | None = None) -> ImageTransform:
    valid = TRAIN_KINDS if train else EVAL_KINDS
    if kind not in valid:
        raise UserError(f"{'train' if train else 'eval'} transform '{kind}' is unknown; "
                        f"expected one of {', '.join(valid)}")
    if crop_padding < 0:
        raise UserError(f"data.crop_padding must be >= 0 (got {crop_padding})")
    size = _target_size(kind, manifest, image_size)
    mode = _filter(interpolation)
    steps: list = []
    native = manifest.image_size
    if kind in ("none", "crop_flip") and image_size is not None and native != (image_size, image_size):
        # an explicit image_size other than the native one rescales the images first
        steps += [T.Resize(image_size, interpolation=mode), T.CenterCrop(image_size)]
    if kind == "crop_flip":
        steps += [T.RandomCrop(size, padding=crop_padding), T.RandomHorizontalFlip()]
    elif kind == "random_resized_crop":
        steps += [T.RandomResizedCrop(size, interpolation=mode), T.RandomHorizontalFlip()]
    elif kind == "resize_center_crop":
        side = size if isinstance(size, int) else min(size)
        steps += [T.Resize(round(side * 8 / 7), interpolation=mode), T.CenterCrop(side)]
    steps += [T.ToTensor(), T.Normalize(manifest.mean, manifest.std)]
    return ImageTransform(manifest.mode, T.Compose(steps))


def build_decode(manifest: Manifest, image_size: int | None = None,
                 interpolation: str | None = None) -> ImageTransform:
    """bytes -> uint8 [C, H, W] with the `none` kind's resize (when image_size is not native) and
    no normalisation: what the device-resident training path keeps (data/device_batches.py)."""
    _target_size("none", manifest, image_size)
    steps: list = []
    if image_size is not None and manifest.image_size != (image_size, image_size):
        steps += [T.Resize(image_size, interpolation=_filter(interpolation)),
                  T.CenterCrop(image_size)]
    return ImageTransform(manifest.mode, T.Compose([*steps, T.PILToTensor()]))
