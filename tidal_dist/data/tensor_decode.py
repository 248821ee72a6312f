"""Batched image decode + eval transform with TorchCodec, on the GPU when there is one.

Pool scoring at ImageNet scale is bound by JPEG decode on the CPU. Image-folder datasets keep the
original JPEG bytes in the shards, so the loader workers only read bytes, and the batch is decoded
by nvJPEG (`torchcodec.decoders.decode_jpeg(..., device="cuda")`), resized, center-cropped and
normalised on the device. The same code runs with device="cpu" (libjpeg-turbo), which is what
the tests compare with the PIL path: same geometry (short side to the eval size, center crop),
bilinear antialiased resize, so values agree within a few grey levels, not bit for bit.

Bytes that are not JPEG (PNG files in an image folder) are decoded on the CPU by decode_image and
join the batch on the device.

TorchCodec (0.17, the wheel built for the pinned torch) is the maintained home of these decoders:
torchvision 0.29 deprecates its own (`torchvision.io`), which decode the same pixels. Where the
TorchCodec wheel cannot be imported (no wheel for the platform, a library it cannot load), the
decoders fall back to torchvision.io and DECODER_NOTE says why (docs/decoding.md).
"""

from __future__ import annotations

import warnings

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from tidal_dist.data.manifest import Manifest
from tidal_dist.job.errors import UserError

try:
    from torchcodec.decoders import ImageReadMode, decode_image, decode_jpeg
    DECODER, DECODER_NOTE = "torchcodec", None
except (ImportError, OSError, RuntimeError) as e:  # a missing wheel, or its libraries failing to load
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg
    DECODER, DECODER_NOTE = "torchvision.io", f"TorchCodec unavailable ({type(e).__name__}: {e})"
    # The fallback is the deprecated torchvision.io on purpose (DECODER_NOTE says why): its
    # notice would repeat on every worker and say nothing the note does not.
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                            category=DeprecationWarning)

_JPEG_MAGIC = b"\xff\xd8\xff"


def raw_bytes(data: bytes) -> torch.Tensor:
    """The StreamingDataset transform of the tensor-decode path: the file's bytes, undecoded."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def collate_raw(batch: list) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    ids, data, labels = zip(*batch)
    return torch.tensor(ids, dtype=torch.long), list(data), torch.tensor(labels, dtype=torch.long)


class TensorDecoder:
    """list of encoded images -> normalised float32 [B, C, S, S] on `device`, with the geometry
    of data.transforms' eval kinds: `none` (resize + center crop only when image_size is set and
    differs from the native size) and `resize_center_crop` (short side to S * 8/7, crop S)."""

    def __init__(self, manifest: Manifest, kind: str, image_size: int | None,
                 device: torch.device, interpolation: str | None = None) -> None:
        self.device = torch.device(device)
        self.interpolation = InterpolationMode(interpolation or "bilinear")
        self.mode = ImageReadMode.GRAY if manifest.mode == "L" else ImageReadMode.RGB
        native = manifest.image_size
        if image_size is None and native is None:
            raise UserError(f"eval transform '{kind}' on dataset '{manifest.dataset}': its images "
                            f"have different sizes, set data.image_size (e.g. 224)")
        side = image_size if image_size is not None else min(native)
        if kind == "resize_center_crop":
            self.resize, self.crop = round(side * 8 / 7), side
        elif kind == "none":
            rescale = image_size is not None and native != (image_size, image_size)
            self.resize, self.crop = (image_size, image_size) if rescale else (None, None)
        else:
            raise UserError(f"eval transform '{kind}' is unknown; expected none, resize_center_crop")
        self.mean = torch.tensor(manifest.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(manifest.std, device=self.device).view(1, -1, 1, 1)

    def decode(self, data: list[torch.Tensor]) -> list[torch.Tensor]:
        """uint8 [C, H, W] per image, on the device."""
        jpeg = [i for i, d in enumerate(data) if bytes(d[:3].tolist()) == _JPEG_MAGIC]
        out: list[torch.Tensor | None] = [None] * len(data)
        if jpeg:
            decoded = decode_jpeg([data[i] for i in jpeg], mode=self.mode, device=self.device)
            for i, image in zip(jpeg, decoded):
                out[i] = image
        for i, d in enumerate(data):
            if out[i] is None:
                out[i] = decode_image(d, mode=self.mode).to(self.device)
        return out

    def geometry(self, image: torch.Tensor) -> torch.Tensor:
        if self.resize is not None:
            image = TF.resize(image, [self.resize], interpolation=self.interpolation,
                              antialias=True)
            image = TF.center_crop(image, [self.crop, self.crop])
        return image

    def __call__(self, data: list[torch.Tensor]) -> torch.Tensor:
        images = torch.stack([self.geometry(image) for image in self.decode(data)])
        return (images.float() / 255.0 - self.mean) / self.std


def use_tensor_decode(setting: str, manifest: Manifest, on_gpu: bool) -> bool:
    """data.decode: 'tensor' always, 'pil' never, 'auto' on a GPU for datasets that keep the
    original (JPEG) bytes: image folders, WebDataset shards and Hugging Face datasets."""
    if setting == "tensor":
        return True
    if setting == "pil":
        return False
    return on_gpu and manifest.source_canonical.startswith(("imagefolder:", "wds:", "hf:"))
