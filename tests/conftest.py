"""Shared fixtures: small prepared datasets (built once per test session) and fake raw sources.

    synthetic_dataset            root of `synthetic:203,5,8x8,1` prepared with shard_size 37:
                                 pool ids 0..202 in 6 shards (5 x 37 + 18), test ids 203..242 in 2
    make_dataset(spec, size)     root of any spec prepared with that shard size, cached per session
    fake_fashion_mnist           a folder of idx .gz files: 300 train / 60 test 28x28 images
    write_fashion_mnist(dir, n_train, n_test)   the same, written where and how big you like
    write_image_folder(root, {split: {class: n}})   PNG/JPEG image folders (ImageNet layout)

Session datasets are shared: tests that damage files must copy them first (copy_dataset).
"""

from __future__ import annotations

import gzip
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SYNTHETIC_SPEC = "synthetic:203,5,8x8,1"
SYNTHETIC_SHARD_SIZE = 37


@pytest.fixture(scope="session")
def make_dataset(tmp_path_factory) -> Callable[[str, int], Path]:
    from tidal_dist.data.shards import prepare

    built: dict[tuple[str, int], Path] = {}

    def make(spec: str, shard_size: int = SYNTHETIC_SHARD_SIZE) -> Path:
        if (spec, shard_size) not in built:
            root = tmp_path_factory.mktemp("dataset") / "shards"
            prepare(spec, root, shard_size=shard_size, progress=False)
            built[(spec, shard_size)] = root
        return built[(spec, shard_size)]

    return make


@pytest.fixture(scope="session")
def synthetic_dataset(make_dataset) -> Path:
    return make_dataset(SYNTHETIC_SPEC, SYNTHETIC_SHARD_SIZE)


@pytest.fixture
def copy_dataset(tmp_path) -> Callable[[Path], Path]:
    """A private copy of a prepared dataset, safe to damage."""
    def copy(root: Path) -> Path:
        target = tmp_path / f"copy-{root.parent.name}"
        shutil.copytree(root, target)
        return target

    return copy


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """An idx file (unsigned bytes) as Fashion-MNIST ships it: magic 0x08, ndim, big-endian dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_fashion_mnist(folder: Path, n_train: int = 300, n_test: int = 60, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.permutation(np.arange(n) % 10))
    return folder


@pytest.fixture(scope="session")
def write_fashion_mnist() -> Callable[..., Path]:
    return _write_fashion_mnist


@pytest.fixture(scope="session")
def fake_fashion_mnist(tmp_path_factory) -> Path:
    return _write_fashion_mnist(tmp_path_factory.mktemp("fashion") / "raw")


def _write_image_folder(root: Path, layout: dict[str, dict[str, int]], size: tuple[int, int] = (12, 10),
                        seed: int = 0) -> Path:
    """layout: {'train': {'cat': 3, 'dog': 2}, 'val': {...}}; alternating .png and .JPEG files of
    varying sizes (to exercise the variable-size path), RGB."""
    rng = np.random.default_rng(seed)
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = size[0] + i % 3, size[1] + i % 2
                image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                if i % 2:
                    image.save(folder / f"img{i}.JPEG", format="JPEG")
                else:
                    image.save(folder / f"img{i}.png", format="PNG")
    return root


@pytest.fixture(scope="session")
def write_image_folder() -> Callable[..., Path]:
    return _write_image_folder
