"""Transforms: decoding, normalisation, augmentation shapes, errors, pickling."""

import io
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from tidal_dist.data.manifest import load_manifest
from tidal_dist.data.transforms import build_transform
from tidal_dist.job.errors import UserError


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def manifest(synthetic_dataset):
    return load_manifest(synthetic_dataset)


def test_none_is_exact_normalisation(manifest):
    array = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    out = build_transform("none", manifest, train=False)(png(array))
    expected = (torch.from_numpy(array).float() / 255 - manifest.mean[0]) / manifest.std[0]
    assert out.shape == (1, 8, 8) and out.dtype == torch.float32
    assert torch.allclose(out[0], expected, atol=1e-6)


def test_grey_and_colour_modes(manifest):
    rgb = png(np.zeros((8, 8, 3), dtype=np.uint8))
    assert build_transform("none", manifest, train=True)(rgb).shape == (1, 8, 8)  # converted to L
    colour = replace(manifest, mode="RGB", mean=[0.5] * 3, std=[0.25] * 3)
    assert build_transform("none", colour, train=False)(png(np.zeros((8, 8), np.uint8))).shape == (3, 8, 8)


def test_crop_flip_is_random_and_keeps_size(manifest):
    torch.manual_seed(0)
    transform = build_transform("crop_flip", manifest, train=True, crop_padding=2)
    data = png(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    outs = [transform(data) for _ in range(20)]
    assert all(o.shape == (1, 8, 8) for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) > 1


def test_resizing_kinds(manifest):
    data = png(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    assert build_transform("random_resized_crop", manifest, True, image_size=6)(data).shape == (1, 6, 6)
    assert build_transform("resize_center_crop", manifest, False, image_size=7)(data).shape == (1, 7, 7)
    assert build_transform("crop_flip", manifest, True, image_size=16)(data).shape == (1, 16, 16)
    assert build_transform("none", manifest, False, image_size=4)(data).shape == (1, 4, 4)


def test_variable_size_needs_image_size(manifest):
    variable = replace(manifest, image_size=None, mode="RGB", mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(UserError, match="data.image_size"):
        build_transform("resize_center_crop", variable, train=False)
    data = png(np.zeros((30, 20, 3), dtype=np.uint8))
    assert build_transform("resize_center_crop", variable, False, image_size=16)(data).shape == (3, 16, 16)


def test_unknown_kind(manifest):
    with pytest.raises(UserError, match="train transform 'resize_center_crop' is unknown"):
        build_transform("resize_center_crop", manifest, train=True)
    with pytest.raises(UserError, match="eval transform 'crop_flip'"):
        build_transform("crop_flip", manifest, train=False)


def test_pickles(manifest):
    transform = build_transform("crop_flip", manifest, train=True)
    clone = pickle.loads(pickle.dumps(transform))
    assert clone(png(np.zeros((8, 8), np.uint8))).shape == (1, 8, 8)
