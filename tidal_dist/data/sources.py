"""Dataset importers: a source spec string -> labelled image bytes for `prepare`.

Spec forms (parse_spec):
    fashion-mnist[:DIR]                  the idx .gz files, read with gzip + numpy
                                         (default DIR: Debian's dataset-fashion-mnist location)
    torchvision:NAME[:DIR], or NAME[:DIR] NAME in cifar10, cifar100, svhn (bare or prefixed) and
                                         fashion-mnist (prefixed only); downloads into DIR
    imagefolder:ROOT                     ROOT/train/<class>/* (labeled) and/or ROOT/pool/** (unlabeled
                                         images at any depth), optional ROOT/val/<class>/* (test)
    synthetic:N,C,HxW[,channels]         seeded random images: cheap, for tests and demos
    wds:PATTERN                          existing WebDataset shards (data/wds_source.py)
    hf:DIR                               a Hugging Face dataset on disk (data/hf_source.py)

A source has two splits: 'pool' (the source's training split: the active-learning pool) and 'test'.
Array sources (everything but imagefolder) are encoded as PNG; imagefolder keeps the original bytes.
Every sample carries its original key (keyed_samples): an image folder's path relative to ROOT,
an array source's `train/INDEX` or `test/INDEX`. A label of -1 (manifest.UNKNOWN_LABEL) means
nobody labeled the sample (an image folder's pool/).

Normalisation statistics are per channel over all pixels of the pool split (population std). They
are exact for array sources. For imagefolder they come from a seeded random sample of at most
STATS_SAMPLE_SIZE pool images, each decoded in the dataset's mode and weighted by its pixel count.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tidal_dist.job.errors import UserError

SPLITS = ("pool", "test")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
TORCHVISION_DIR = "data/raw"
TORCHVISION_NAMES = ("cifar10", "cifar100", "svhn", "fashion-mnist")
BARE_TORCHVISION_ALIASES = ("cifar10", "cifar100", "svhn")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
STATS_SAMPLE_SIZE = 2000
SYNTHETIC_SEED = 20230  # fixed: the same synthetic spec always gives the same images

SPEC_HELP = ("expected one of: fashion-mnist[:DIR], torchvision:{cifar10,cifar100,svhn,fashion-mnist}[:DIR], "
             "cifar10|cifar100|svhn[:DIR], imagefolder:ROOT, synthetic:N,C,HxW[,channels], "
             "wds:PATTERN, hf:DIR")
UNKNOWN_LABEL = -1


@dataclass(frozen=True)
class SourceSpec:
    """A parsed spec. `canonical` identifies the data: two specs with the same canonical form
    (e.g. `fashion-mnist` and `fashion-mnist:/usr/share/datasets/fashion-mnist`) give the same
    dataset."""

    kind: str  # 'fashion-mnist' | 'torchvision' | 'imagefolder' | 'synthetic' | 'wds' | 'hf'
    name: str  # dataset name recorded in the manifest
    path: str | None = None  # absolute folder (wds: the shard pattern), for every kind but synthetic
    params: tuple[int, ...] = ()  # synthetic only: N, C, H, W, channels

    @property
    def canonical(self) -> str:
        if self.kind == "synthetic":
            n, c, h, w, ch = self.params
            return f"synthetic:{n},{c},{h}x{w},{ch}"
        if self.kind == "torchvision":
            return f"torchvision:{self.name}:{self.path}"
        return f"{self.kind}:{self.path}"


def _parse_synthetic(spec: str, body: str) -> SourceSpec:
    parts = body.split(",")
    try:
        if len(parts) not in (3, 4):
            raise ValueError
        n, c = int(parts[0]), int(parts[1])
        h, w = (int(v) for v in parts[2].lower().split("x"))
        channels = int(parts[3]) if len(parts) == 4 else 3
    except ValueError:
        raise UserError(f"source '{spec}': expected synthetic:N,C,HxW[,channels], "
                        f"e.g. synthetic:1000,10,8x8,1") from None
    if n < 1 or c < 1 or h < 1 or w < 1 or channels not in (1, 3):
        raise UserError(f"source '{spec}': need N >= 1, C >= 1, H, W >= 1 and channels 1 or 3")
    return SourceSpec("synthetic", "synthetic", None, (n, c, h, w, channels))


def parse_spec(spec: str) -> SourceSpec:
    """Parse without touching the disk (prepare uses this to recognise an existing output)."""
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        return _parse_synthetic(spec, rest)
    if kind == "fashion-mnist":
        return SourceSpec("fashion-mnist", "fashion-mnist", str(Path(rest or FASHION_MNIST_DIR).absolute()))
    if kind in ("imagefolder", "hf"):
        if not rest:
            raise UserError(f"source '{spec}': expected {kind}:{'ROOT' if kind == 'imagefolder' else 'DIR'}")
        root = Path(rest).absolute()
        return SourceSpec(kind, root.name, str(root))
    if kind == "wds":
        if not rest:
            raise UserError(f"source '{spec}': expected wds:PATTERN, e.g. wds:/data/train-{{000..127}}.tar")
        from urllib.parse import urlparse

        local = rest.startswith("/") or not (rest.startswith("pipe:") or urlparse(rest).scheme)
        pattern = str(Path(rest).absolute()) if local else rest
        return SourceSpec("wds", Path(urlparse(pattern).path.split(" ")[0]).parent.name or "wds", pattern)
    if kind == "torchvision":
        name, _, folder = rest.partition(":")
    elif kind in BARE_TORCHVISION_ALIASES:
        name, folder = kind, rest
    else:
        raise UserError(f"source '{spec}': unknown source kind '{kind}'; {SPEC_HELP}")
    if name not in TORCHVISION_NAMES:
        raise UserError(f"source '{spec}': unknown torchvision dataset '{name}'; "
                        f"expected one of {', '.join(TORCHVISION_NAMES)}")
    return SourceSpec("torchvision", name, str(Path(folder or TORCHVISION_DIR).absolute()))


# ----------------------------------------------------------------------------------------------
# Normalisation statistics from per-channel histograms of uint8 pixels: exact, and no float copy
# of the whole dataset is ever made.

def channel_histograms(pixels: np.ndarray, channels: int) -> np.ndarray:
    """(channels, 256) counts for uint8 pixels shaped (..., H, W) (grey) or (..., H, W, channels)."""
    flat = pixels.reshape(-1, channels)
    return np.stack([np.bincount(flat[:, c], minlength=256) for c in range(flat.shape[1])])


def mean_std_from_histograms(hist: np.ndarray) -> tuple[list[float], list[float]]:
    values = np.arange(256, dtype=np.float64) / 255.0
    counts = hist.astype(np.float64)
    total = counts.sum(axis=1)
    mean = (counts * values).sum(axis=1) / total
    var = (counts * (values - mean[:, None]) ** 2).sum(axis=1) / total
    return [float(m) for m in mean], [float(s) for s in np.sqrt(var)]


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class Source:
    """What prepare needs from a dataset. Subclasses fill the attributes and `samples`."""

    spec: SourceSpec
    class_names: list[str]
    mode: str  # PIL mode the images are decoded into: 'L' or 'RGB'
    image_size: tuple[int, int] | None  # (H, W), None when sizes vary
    mean: list[float]
    std: list[float]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def skipped(self) -> int:
        """Unreadable images left out (imagefolder with skip_bad)."""
        return 0

    def split_length(self, split: str) -> int:
        """Number of samples, or an upper bound when unreadable files may be skipped."""
        raise NotImplementedError

    def samples(self, split: str) -> Iterator[tuple[int, bytes, str]]:
        """(label, image bytes, extension without the dot), in a fixed order."""
        for _key, label, data, ext in self.keyed_samples(split):
            yield label, data, ext

    def keyed_samples(self, split: str) -> Iterator[tuple[str, int, bytes, str]]:
        """(original key, label or -1, image bytes, extension), in a fixed order."""
        raise NotImplementedError


class ArraySource(Source):
    """Images held as a uint8 array (N, H, W) or (N, H, W, 3) per split."""

    def __init__(self, spec: SourceSpec, class_names: list[str], images: dict[str, np.ndarray],
                 labels: dict[str, np.ndarray]) -> None:
        self.spec = spec
        self.class_names = list(class_names)
        self.images = {s: np.ascontiguousarray(images[s], dtype=np.uint8) for s in SPLITS}
        self.labels = {s: np.asarray(labels[s], dtype=np.int64) for s in SPLITS}
        for split in SPLITS:
            if len(self.images[split]) != len(self.labels[split]):
                raise UserError(f"source '{spec.canonical}' {split}: {len(self.images[split])} images "
                                f"but {len(self.labels[split])} labels")
            bad = (self.labels[split] < 0) | (self.labels[split] >= len(self.class_names))
            if bad.any():
                raise UserError(f"source '{spec.canonical}' {split}: label {self.labels[split][bad][0]} "
                                f"outside 0..{len(self.class_names) - 1}")
        pool = self.images["pool"]
        self.mode = "L" if pool.ndim == 3 else "RGB"
        self.image_size = (int(pool.shape[1]), int(pool.shape[2]))
        channels = 1 if pool.ndim == 3 else 3
        self.mean, self.std = mean_std_from_histograms(channel_histograms(pool, channels))

    def split_length(self, split: str) -> int:
        return len(self.labels[split])

    def keyed_samples(self, split: str) -> Iterator[tuple[str, int, bytes, str]]:
        original = "train" if split == "pool" else "test"
        for index, (image, label) in enumerate(zip(self.images[split], self.labels[split])):
            yield f"{original}/{index}", int(label), encode_png(image), "png"


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST idx files

IDX_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803 / 0x0801: unsigned bytes, 3 / 1 dims


def read_idx_gz(path: Path, kind: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"Fashion-MNIST file '{path}' does not exist")
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation: EOFError
        raise UserError(f"Fashion-MNIST file '{path}' is not a readable .gz file ({e}); "
                        f"download or install it again") from None
    expected_magic = IDX_MAGIC[kind]
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != expected_magic:
        raise UserError(f"Fashion-MNIST file '{path}': idx magic number {magic}, expected "
                        f"{expected_magic} for {kind}")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header]) if len(data) >= header else ()
    expected_len = header + int(np.prod(dims)) if dims else None
    if len(data) != expected_len:
        raise UserError(f"Fashion-MNIST file '{path}': {len(data)} bytes after decompression, "
                        f"its idx header announces {expected_len}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _fashion_mnist_source(spec: SourceSpec) -> ArraySource:
    folder = Path(spec.path)
    if not folder.is_dir():
        raise UserError(f"Fashion-MNIST folder '{folder}' does not exist (on Debian/Ubuntu: "
                        f"apt install dataset-fashion-mnist, or pass fashion-mnist:DIR)")
    images, labels = {}, {}
    for split, prefix in (("pool", "train"), ("test", "t10k")):
        images[split] = read_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", "images")
        labels[split] = read_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", "labels")
    return ArraySource(spec, FASHION_MNIST_CLASSES, images, labels)


# ----------------------------------------------------------------------------------------------
# torchvision datasets (downloaded into DIR when missing)

def _torchvision_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    data = dataset.data
    data = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    if data.ndim == 4 and data.shape[1] == 3:  # SVHN stores NCHW
        data = data.transpose(0, 2, 3, 1)
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = dataset.labels
    labels = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
    return data, labels


def _torchvision_source(spec: SourceSpec) -> ArraySource:
    import urllib.error

    import torchvision.datasets as tvd

    classes = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fashion-mnist": tvd.FashionMNIST}
    images, labels, class_names = {}, {}, None
    try:
        for split, train in (("pool", True), ("test", False)):
            if spec.name == "svhn":
                dataset = tvd.SVHN(spec.path, split="train" if train else "test", download=True)
                class_names = [str(d) for d in range(10)]
            else:
                dataset = classes[spec.name](spec.path, train=train, download=True)
                class_names = list(dataset.classes)
            images[split], labels[split] = _torchvision_arrays(dataset)
    except (RuntimeError, OSError, urllib.error.URLError) as e:
        raise UserError(f"torchvision {spec.name} in '{spec.path}': cannot load or download it ({e}); "
                        f"put the files there by hand on a machine without network") from None
    return ArraySource(spec, class_names, images, labels)


# ----------------------------------------------------------------------------------------------
# Synthetic data: class prototypes plus noise, so small models can learn something from it.

def _synthetic_source(spec: SourceSpec) -> ArraySource:
    n_pool, num_classes, height, width, channels = spec.params
    rng = np.random.default_rng(SYNTHETIC_SEED)
    prototypes = rng.integers(0, 256, size=(num_classes, height, width, channels))
    images, labels = {}, {}
    for split, n in (("pool", n_pool), ("test", max(n_pool // 5, num_classes))):
        labels[split] = rng.permutation(np.arange(n) % num_classes)
        noise = rng.integers(0, 256, size=(n, height, width, channels))
        mixed = (0.6 * prototypes[labels[split]] + 0.4 * noise).astype(np.uint8)
        images[split] = mixed[..., 0] if channels == 1 else mixed
    return ArraySource(spec, [f"class_{c}" for c in range(num_classes)], images, labels)


# ----------------------------------------------------------------------------------------------
# Image folders (ImageNet / iNaturalist layout): original bytes are kept, never re-encoded.

def image_size_of(data: bytes) -> tuple[int, int] | None:
    """(width, height) of encoded image bytes; None when PIL cannot read them."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            return image.size
    except Exception:  # PIL raises many types (SyntaxError, OSError, ValueError...) for bad files
        return None


def _image_is_readable(data: bytes) -> bool:
    return image_size_of(data) is not None


def _extension(path: Path, data: bytes) -> str:
    if path.suffix:
        return path.suffix[1:].lower()
    with Image.open(io.BytesIO(data)) as image:  # no suffix: name it after the detected format
        return (image.format or "bin").lower()


def resolved_against(path: str | Path) -> str:
    """' (a relative path, looked up in CWD)' for a relative path, so a message about a missing
    relative path says where it was looked for; '' for an absolute one."""
    return "" if Path(path).is_absolute() else f" (a relative path, looked up in {Path.cwd()})"


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line in label order (blank lines ignored)."""
    file = Path(path)
    try:
        names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"class names file '{file}'{resolved_against(path)} cannot be read: {e}") from None
    names = [n for n in names if n]
    if not names:
        raise UserError(f"class names file '{file}' holds no class name (expected one per line)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"class names file '{file}': names given more than once: {repeated[:5]}")
    return names


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _list_class_files(split_dir: Path, class_index: dict[str, int] | None
                      ) -> tuple[list[tuple[int, Path]], dict[str, int]]:
    """(label, file) sorted by class then path, and the class index used.

    class_index None: the classes are this folder's class folders, sorted by name."""
    if not split_dir.is_dir():
        raise UserError(f"image folder '{split_dir}' does not exist (expected ROOT/train/<class>/* "
                        f"and ROOT/val/<class>/*)")
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"image folder '{split_dir}' has no class folders")
    if class_index is None:
        class_index = {d.name: i for i, d in enumerate(class_dirs)}
    files = []
    for class_dir in class_dirs:
        if class_dir.name not in class_index:
            where = "the train split" if split_dir.name == "val" else "the class names"
            raise UserError(f"class folder '{class_dir}' has no counterpart in {where}")
        found = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not found:
            raise UserError(f"class folder '{class_dir}' is empty")
        files += [(class_index[class_dir.name], p) for p in found]
    return files, class_index


class ImageFolderSource(Source):
    """ROOT/train/<class>/* (labeled pool), ROOT/pool/** (unlabeled pool images at any depth, no
    class folders), either or both; ROOT/val/<class>/* (the test split) is optional. Class names:
    the train split's class folders, else `classes_file`, else val/'s class folders."""

    mode = "RGB"

    def __init__(self, spec: SourceSpec, skip_bad: bool, classes_file: str | None = None) -> None:
        root = Path(spec.path)
        if not root.is_dir():
            raise UserError(f"image folder '{root}' does not exist{resolved_against(spec.path)}")
        self.spec = spec
        self.skip_bad = skip_bad
        train, pool, val = root / "train", root / "pool", root / "val"
        if not train.is_dir() and not pool.is_dir():
            raise UserError(f"image folder '{root}' has neither train/ (ROOT/train/<class>/*, labeled) "
                            f"nor pool/ (ROOT/pool/*, unlabeled images at any depth)")
        class_index = None
        if classes_file is not None:
            class_index = {name: i for i, name in enumerate(read_class_names(classes_file))}
        pool_files: list[tuple[int, Path]] = []
        if train.is_dir():
            pool_files, class_index = _list_class_files(train, class_index)
        if pool.is_dir():
            unlabeled = _visible_files(pool)
            if not unlabeled:
                raise UserError(f"image folder '{pool}' holds no image file")
            pool_files += [(UNKNOWN_LABEL, p) for p in unlabeled]
        test_files: list[tuple[int, Path]] = []
        if val.is_dir():
            test_files, class_index = _list_class_files(val, class_index)
        if class_index is None:
            raise UserError(f"image folder '{root}': no class names (pool/ has no class folders and "
                            f"there is no val/<class>/); list them one per line in a file and "
                            f"prepare with --classes FILE")
        self.class_names = list(class_index)
        self.root = root
        self.files = {"pool": pool_files, "test": test_files}
        self._skipped = {split: 0 for split in SPLITS}
        self._sizes: set[tuple[int, int]] = set()
        self.mean, self.std = self._sample_statistics()

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) when every image written so far has that size; None when sizes differ."""
        return shared_size(self._sizes)

    @property
    def skipped(self) -> int:
        return sum(self._skipped.values())

    def _bad_file(self, path: Path) -> None:
        if not self.skip_bad:
            raise UserError(f"image file '{path}' cannot be read as an image (PIL verify failed); "
                            f"fix or delete it, or prepare with skip_bad (--skip-bad) to leave it out")

    def _sample_statistics(self) -> tuple[list[float], list[float]]:
        pool = self.files["pool"]
        rng = np.random.default_rng(0)
        picked = rng.choice(len(pool), size=min(STATS_SAMPLE_SIZE, len(pool)), replace=False)
        hist = np.zeros((3, 256), dtype=np.int64)
        for index in sorted(picked):
            path = pool[index][1]
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert(self.mode))
            except Exception:
                self._bad_file(path)  # raises unless skip_bad; skipped files are counted while writing
                continue
            hist += channel_histograms(pixels, 3)
        if hist.sum() == 0:
            raise UserError(f"image folder '{self.spec.path}': no readable image in the pool")
        return mean_std_from_histograms(hist)

    def split_length(self, split: str) -> int:
        return len(self.files[split])

    def keyed_samples(self, split: str) -> Iterator[tuple[str, int, bytes, str]]:
        self._skipped[split] = 0
        for label, path in self.files[split]:
            data = path.read_bytes()
            size = image_size_of(data)
            if size is None:
                self._bad_file(path)
                self._skipped[split] += 1
                continue
            self._sizes.add(size)
            yield path.relative_to(self.root).as_posix(), label, data, _extension(path, data)


def open_source(spec: str, skip_bad: bool = False, options: dict | None = None) -> Source:
    """Open the source named by `spec`; every problem with it is a UserError naming the path.
    `options`: the source options prepare was given beyond shard size and skip_bad (classes,
    eval_source, image_key, label); each kind refuses the ones it does not take."""
    parsed = parse_spec(spec)
    options = dict(options or {})
    if parsed.kind in ("wds", "hf"):  # built on this module: data/shards.open_any_source opens them
        raise ValueError(f"open {parsed.kind}: sources with data.shards.open_any_source")
    takes = {"classes"} if parsed.kind == "imagefolder" else set()
    refused = sorted(set(options) - takes)
    if refused:
        kinds = "wds:, hf: and imagefolder:" if refused == ["classes"] else "wds: and hf:"
        names = " and ".join("--" + name.replace("_", "-") for name in refused)
        verb = "applies" if len(refused) == 1 else "apply"
        raise UserError(f"source '{spec}': {names} {verb} only to {kinds} sources")
    if parsed.kind == "synthetic":
        return _synthetic_source(parsed)
    if parsed.kind == "fashion-mnist":
        return _fashion_mnist_source(parsed)
    if parsed.kind == "imagefolder":
        return ImageFolderSource(parsed, skip_bad, options.get("classes"))
    return _torchvision_source(parsed)


# ----------------------------------------------------------------------------------------------
# What the sources of existing collections (wds:, hf:) share: statistics from a sample of
# encoded images, and class indices from labels as the data states them.

def shared_size(sizes: set[tuple[int, int]]) -> tuple[int, int] | None:
    """(H, W) when every image had the one (width, height) in `sizes`; None when sizes differ."""
    if len(sizes) != 1:
        return None
    width, height = next(iter(sizes))
    return height, width


class CollectionSource(Source):
    """A source of an existing collection (wds:, hf:): RGB images kept as they are, unreadable
    ones counted when skip_bad. Subclasses check every sample once when opened."""

    mode = "RGB"
    image_size: tuple[int, int] | None = None

    def __init__(self, spec: SourceSpec, skip_bad: bool) -> None:
        self.spec = spec
        self.skip_bad = skip_bad
        self._skipped = 0

    @property
    def skipped(self) -> int:
        return self._skipped


class PixelStatsSample:
    """Normalisation statistics over a seeded uniform sample of at most STATS_SAMPLE_SIZE images
    offered one at a time, without knowing how many will come: reservoir sampling (Vitter,
    "Random sampling with a reservoir", ACM TOMS 1985, Algorithm R). An image is decoded only
    when it enters the reservoir, and only its (3, 256) histogram is kept."""

    def __init__(self, mode: str = "RGB", seed: int = 0) -> None:
        self.mode = mode
        self.rng = np.random.default_rng(seed)
        self.reservoir: list[np.ndarray] = []
        self.seen = 0

    def offer(self, image: bytes) -> None:
        slot = self.seen if self.seen < STATS_SAMPLE_SIZE else int(self.rng.integers(0, self.seen + 1))
        self.seen += 1
        if slot >= STATS_SAMPLE_SIZE:
            return
        with Image.open(io.BytesIO(image)) as decoded:
            hist = channel_histograms(np.asarray(decoded.convert(self.mode)), 3 if self.mode == "RGB" else 1)
        if slot == len(self.reservoir):
            self.reservoir.append(hist)
        else:
            self.reservoir[slot] = hist

    def mean_std(self) -> tuple[list[float], list[float]]:
        return mean_std_from_histograms(np.sum(self.reservoir, axis=0))


def label_value(value: object) -> int | str | None:
    """A label as the data states it: an integer (also from its text), a name, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        try:
            return int(value)
        except ValueError:
            return value or None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    return str(value)


def class_indices(raw: dict[str, list[int | str | None]], keys: dict[str, list[str]],
                  names: list[str] | None, where: str) -> tuple[list[str], dict[str, list[int]]]:
    """(class names, per-split label indices with -1 for unknown) from raw labels.

    names None: integer labels name the classes 0..max by their number; names are sorted,
    numerically when every name is an integer (so "10" never sorts before "2"). A given list
    of names maps a name to its position and an integer must index it."""
    values = [v for split in raw.values() for v in split if v is not None]
    if names is None:
        if not values:
            raise UserError(f"{where}: no sample has a label, so nothing names the classes; list "
                            f"them one per line in a file and prepare with --classes FILE")
        if all(isinstance(v, int) for v in values):
            names = [str(c) for c in range(max(values) + 1)]
        elif all(isinstance(v, str) for v in values):
            names = sorted(set(values))
        else:
            raise UserError(f"{where}: labels mix integers and names (e.g. "
                            f"{next(v for v in values if isinstance(v, int))!r} and "
                            f"{next(v for v in values if isinstance(v, str))!r}); give the class "
                            f"names with --classes FILE")
    index = {name: i for i, name in enumerate(names)}
    out: dict[str, list[int]] = {}
    for split, labels in raw.items():
        converted = []
        for key, value in zip(keys[split], labels):
            if value is None:
                converted.append(UNKNOWN_LABEL)
            elif isinstance(value, str) and value in index:
                converted.append(index[value])
            elif isinstance(value, int) and 0 <= value < len(names):
                converted.append(value)
            else:
                raise UserError(f"{where}: sample '{key}' ({split}): label {value!r} is not one of "
                                f"the {len(names)} classes (0..{len(names) - 1} or a class name)")
        out[split] = converted
    return names, out
