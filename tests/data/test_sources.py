"""Sources: spec parsing, the idx reader, synthetic data, image folders, normalisation stats."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tidal_dist.data.sources import (FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, open_source, parse_spec)
from tidal_dist.job.errors import UserError


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_parse_spec_forms():
    assert parse_spec("fashion-mnist").canonical == f"fashion-mnist:{FASHION_MNIST_DIR}"
    assert parse_spec("fashion-mnist:/x/y").path == "/x/y"
    assert parse_spec("cifar10").canonical == parse_spec("torchvision:cifar10").canonical
    assert parse_spec("svhn:/d").canonical == "torchvision:svhn:/d"
    assert parse_spec("torchvision:fashion-mnist:/d").name == "fashion-mnist"
    assert parse_spec("imagefolder:/data/imagenet").name == "imagenet"
    assert parse_spec("synthetic:10,2,4x6").params == (10, 2, 4, 6, 3)
    for bad in ("mnist", "torchvision:imagenet", "synthetic:10,2", "synthetic:10,2,4x4,2", "imagefolder:"):
        with pytest.raises(UserError, match="source"):
            parse_spec(bad)


def test_synthetic_is_deterministic_and_sized():
    a, b = open_source("synthetic:53,4,6x5,3"), open_source("synthetic:53,4,6x5,3")
    assert (a.mode, a.image_size) == ("RGB", (6, 5))
    assert a.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert a.split_length("pool") == 53 and a.split_length("test") == 10  # max(53 // 5, 4)
    assert open_source("synthetic:7,4,2x2,1").split_length("test") == 4  # at least one per class
    sa, sb = list(a.samples("pool")), list(b.samples("pool"))
    assert sa == sb
    assert decode(sa[0][1]).shape == (6, 5, 3) and sa[0][2] == "png"
    assert np.bincount([label for label, _, _ in sa]).tolist() == [14, 13, 13, 13]


def test_fashion_mnist_reads_idx_and_exact_stats(fake_fashion_mnist):
    source = open_source(f"fashion-mnist:{fake_fashion_mnist}")
    assert source.class_names == FASHION_MNIST_CLASSES and source.mode == "L"
    assert source.image_size == (28, 28)
    assert source.split_length("pool") == 300 and source.split_length("test") == 60
    pixels = np.stack([decode(data) for _, data, _ in source.samples("pool")]) / 255.0
    assert source.mean == pytest.approx([pixels.mean()], abs=1e-12)
    assert source.std == pytest.approx([pixels.std()], abs=1e-12)
    assert source.images["pool"][5].tolist() == decode(list(source.samples("pool"))[5][1]).tolist()


def test_fashion_mnist_missing_folder_and_file(tmp_path, write_fashion_mnist):
    with pytest.raises(UserError, match=str(tmp_path / "nope")):
        open_source(f"fashion-mnist:{tmp_path / 'nope'}")
    folder = write_fashion_mnist(tmp_path / "fm", 20, 10)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz"):
        open_source(f"fashion-mnist:{folder}")


def test_fashion_mnist_truncated_and_wrong_magic(tmp_path, write_fashion_mnist):
    folder = write_fashion_mnist(tmp_path / "fm", 50, 10)
    images = folder / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-200])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz.*not a readable .gz"):
        open_source(f"fashion-mnist:{folder}")
    folder = write_fashion_mnist(tmp_path / "fm2", 50, 10)
    # a labels file where an images file belongs: gzip is fine, the idx magic is not
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz.*magic number 2049, expected 2051"):
        open_source(f"fashion-mnist:{folder}")


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz").exists(),
                    reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist_files():
    source = open_source("fashion-mnist")
    assert source.split_length("pool") == 60000 and source.split_length("test") == 10000
    assert source.mean == pytest.approx([0.2860], abs=1e-4)
    assert source.std == pytest.approx([0.3530], abs=1e-4)
    first = [sample for _, sample in zip(range(300), source.samples("test"))]
    assert [label for label, _, _ in first[:10]] == source.labels["test"][:10].tolist()
    assert all(decode(data).shape == (28, 28) for _, data, _ in first)


def test_imagefolder_keeps_bytes_and_sorted_classes(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "imgs", {"train": {"dog": 3, "cat": 4, "ant": 2},
                                                  "val": {"cat": 2, "dog": 1}})
    source = open_source(f"imagefolder:{root}")
    assert source.class_names == ["ant", "cat", "dog"]
    assert source.mode == "RGB" and source.image_size is None
    pool = list(source.samples("pool"))
    assert [label for label, _, _ in pool] == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert pool[0][1] == (root / "train/ant/img0.png").read_bytes()
    assert pool[1][2] == "jpeg"  # img1.JPEG: lowercased suffix, bytes not re-encoded
    assert pool[1][1] == (root / "train/ant/img1.JPEG").read_bytes()
    assert [label for label, _, _ in source.samples("test")] == [1, 1, 2]
    pixels = np.concatenate([decode(d).reshape(-1, 3) for _, d, _ in pool]) / 255.0
    assert source.mean == pytest.approx(pixels.mean(axis=0).tolist(), abs=1e-9)  # < 2000: all sampled
    assert source.std == pytest.approx(pixels.std(axis=0).tolist(), abs=1e-9)


def test_imagefolder_errors(tmp_path, write_image_folder):
    with pytest.raises(UserError, match="missing_root"):
        open_source(f"imagefolder:{tmp_path / 'missing_root'}")
    root = write_image_folder(tmp_path / "a", {"train": {"cat": 2}, "val": {"cat": 1}})
    (root / "train" / "dog").mkdir()
    with pytest.raises(UserError, match=r"class folder '.*train/dog' is empty"):
        open_source(f"imagefolder:{root}")
    root = write_image_folder(tmp_path / "b", {"train": {"cat": 2}, "val": {"cat": 1, "cow": 1}})
    with pytest.raises(UserError, match=r"val/cow' has no counterpart"):
        open_source(f"imagefolder:{root}")
    root = write_image_folder(tmp_path / "c", {"val": {"cat": 2}})
    with pytest.raises(UserError, match=r"c' has neither train/ .* nor pool/"):
        open_source(f"imagefolder:{root}")


def test_imagefolder_without_val_has_an_empty_test_split(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "c", {"train": {"cat": 2, "dog": 1}})
    source = open_source(f"imagefolder:{root}")
    assert source.split_length("test") == 0 and source.split_length("pool") == 3
    keys = [key for key, *_ in source.keyed_samples("pool")]
    assert keys == sorted(p.relative_to(root).as_posix() for p in (root / "train").rglob("*.*"))


def test_relative_missing_root_names_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"'{tmp_path}/no_such_folder' does not exist"):
        open_source("imagefolder:no_such_folder")
    from tidal_dist.data.manifest import load_manifest

    with pytest.raises(UserError, match=f"relative path, looked up in {tmp_path}"):
        load_manifest("no_such_dataset")


def test_imagefolder_unreadable_image(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "imgs", {"train": {"cat": 3, "dog": 3}, "val": {"cat": 1}})
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(UserError, match="broken.jpg"):
        list(open_source(f"imagefolder:{root}").samples("pool"))
    source = open_source(f"imagefolder:{root}", skip_bad=True)
    assert len(list(source.samples("pool"))) == 6 and source.skipped == 1
