"""Batched torchvision.io decode for scoring (GPU in production; device='cpu' here) against the
PIL path: same geometry, values within a few grey levels."""

import numpy as np
import pytest
import torch
from PIL import Image

from tidal_dist.data.manifest import load_manifest
from tidal_dist.data.readers import RandomAccessReader
from tidal_dist.data.shards import prepare
from tidal_dist.data.tensor_decode import TensorDecoder, raw_bytes, use_tensor_decode
from tidal_dist.data.transforms import build_transform


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """Smooth RGB images of varying sizes (JPEG and PNG), prepared as image-folder shards."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = 40 + 3 * i, 52 - 2 * i
                yy, xx = np.mgrid[0:h, 0:w]
                f = rng.uniform(0.05, 0.3, 3)
                image = np.stack([127 + 120 * np.sin(f[k] * (xx + (k + 1) * yy)) for k in range(3)], -1)
                pil = Image.fromarray(image.astype(np.uint8))
                if i % 3:
                    pil.save(root / split / c / f"{i}.JPEG", quality=95)
                else:
                    pil.save(root / split / c / f"{i}.png")
    out = tmp_path_factory.mktemp("shards") / "folder"
    prepare(f"imagefolder:{root}", out, shard_size=10, progress=False)
    return out


@pytest.mark.parametrize("kind,size", [("resize_center_crop", 24), ("none", 32)])
def test_tensor_decode_matches_the_pil_path(jpeg_folder, kind, size):
    manifest = load_manifest(jpeg_folder)
    ids = manifest.split("pool").ids()
    pil = RandomAccessReader(jpeg_folder, "pool", build_transform(kind, manifest, train=False,
                                                                  image_size=size))
    raw = RandomAccessReader(jpeg_folder, "pool", raw_bytes)
    decoder = TensorDecoder(manifest, kind, size, torch.device("cpu"))
    got = decoder([raw[int(i)][1] for i in ids])
    ref = torch.stack([pil[int(i)][1] for i in ids])
    assert got.shape == ref.shape == (len(ids), 3, size, size)
    # Back to grey levels: the decoders' IDCT and resize kernels differ slightly.
    std = torch.tensor(manifest.std).view(1, 3, 1, 1)
    diff = ((got - ref) * std * 255).abs()
    assert diff.mean() < 1.5, diff.mean()
    assert diff.max() < 24, diff.max()


def test_auto_uses_tensor_decode_only_on_a_gpu_for_image_folders(jpeg_folder, synthetic_dataset):
    folder, synthetic = load_manifest(jpeg_folder), load_manifest(synthetic_dataset)
    assert use_tensor_decode("auto", folder, on_gpu=True)
    assert not use_tensor_decode("auto", folder, on_gpu=False)
    assert not use_tensor_decode("auto", synthetic, on_gpu=True)  # PNG re-encodes: no gain
    assert use_tensor_decode("tensor", synthetic, on_gpu=False)
    assert not use_tensor_decode("pil", folder, on_gpu=True)


def test_scoring_with_tensor_decode_gives_the_pil_paths_outputs(jpeg_folder, tmp_path):
    from tidal_dist.config import load_config
    from tidal_dist.training.inference import predict
    from tidal_dist.training.session import build_session

    outputs = {}
    for decode in ("pil", "tensor"):
        cfg = load_config(None, [f"data.root={jpeg_folder}", "data.num_workers=0",
                                 "data.eval_transform=resize_center_crop", "data.image_size=24",
                                 f"data.decode={decode}", "model.backbone=small_cnn",
                                 "model.width=4", f"run.dir={tmp_path}"])
        session = build_session(cfg)
        rows = [(i, out["logits"]) for i, _, out in predict(session, "pool", 8)]
        outputs[decode] = (torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]))
    torch.testing.assert_close(outputs["tensor"][0], outputs["pil"][0], rtol=0, atol=0)
    torch.testing.assert_close(outputs["tensor"][1], outputs["pil"][1], rtol=0.05, atol=0.05)
