"""Device-resident training data: decode once, crop/flip/normalise in batched tensor ops."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from tidal_dist.config import load_config
from tidal_dist.data.device_batches import (DeviceImages, crop_flip, crop_flip_params,
                                            visit_seeds)
from tidal_dist.data.manifest import load_manifest
from tidal_dist.data.readers import RandomAccessReader, visit_seed
from tidal_dist.data.train_batches import choose_path
from tidal_dist.data.transforms import build_decode, build_transform
from tidal_dist.job.errors import UserError


def test_visit_seeds_equal_the_scalar_visit_seed():
    ids = np.array([0, 1, 17, 10**9, 2**40 + 3])
    for epoch_seed, epoch in ((0, 0), (5_000_018, 7), (2**40, 199)):
        got = visit_seeds(epoch_seed, epoch, ids)
        assert got.tolist() == [visit_seed(epoch_seed, epoch, int(i)) for i in ids]


def test_offsets_cover_the_random_crop_range_and_both_flips():
    """torchvision RandomCrop(size, padding=p) draws the corner in [0, 2p] on each axis."""
    top, left, flip = crop_flip_params(visit_seeds(3, 1, np.arange(20_000)), padding=4)
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))
    counts = np.bincount(top, minlength=9) / len(top)
    assert np.abs(counts - 1 / 9).max() < 0.01  # uniform
    assert abs(flip.mean() - 0.5) < 0.01
    assert np.corrcoef(top, left)[0, 1] ** 2 < 1e-3  # independent draws
    zero = crop_flip_params(visit_seeds(3, 1, np.arange(50)), padding=0)
    assert not zero[0].any() and not zero[1].any()


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_and_flip_equal_torchvision_pad_crop_flip_on_pil(channels):
    rng = np.random.default_rng(0)
    pad, h, w = 4, 8, 10
    arrays = rng.integers(0, 256, (6, h, w, channels), dtype=np.uint8)
    images = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()
    top = torch.tensor([0, 8, 3, 0, 8, 5])
    left = torch.tensor([0, 8, 7, 8, 0, 2])
    flip = torch.tensor([False, True, True, False, False, True])
    got = crop_flip(images, top, left, flip, pad)
    for b in range(6):
        pil = Image.fromarray(arrays[b].squeeze(-1) if channels == 1 else arrays[b])
        ref = TF.crop(TF.pad(pil, pad), int(top[b]), int(left[b]), h, w)
        if flip[b]:
            ref = TF.hflip(ref)
        torch.testing.assert_close(got[b], TF.pil_to_tensor(ref), rtol=0, atol=0)


def test_device_images_match_the_loader_transform_and_are_deterministic_per_visit(synthetic_dataset):
    manifest = load_manifest(synthetic_dataset)
    ids = np.arange(10, 60, dtype=np.int64)
    decoder = RandomAccessReader(synthetic_dataset, "pool", build_decode(manifest))
    images = DeviceImages.decode(decoder, ids, manifest.mean, manifest.std, torch.device("cpu"),
                                 num_workers=0, batch_size=7)
    assert images.images.dtype == torch.uint8 and images.images.shape == (50, 1, 8, 8)
    loader = RandomAccessReader(synthetic_dataset, "pool", build_transform("none", manifest, train=False))
    rows = torch.arange(50)
    plain = images.batch(rows)
    ref = torch.stack([loader[int(i)][1] for i in ids])
    torch.testing.assert_close(plain, ref, rtol=1e-6, atol=1e-6)  # same decode + normalisation
    # One visit, one augmentation: whatever batch it lands in, in whatever order.
    def augmented(subset):
        t, l, f = (torch.from_numpy(a) for a in crop_flip_params(visit_seeds(9, 2, ids[subset]), 4))
        return images.batch(torch.from_numpy(subset), t, l, f, padding=4)
    whole = augmented(np.arange(50))
    perm = np.random.default_rng(1).permutation(50)
    torch.testing.assert_close(augmented(perm), whole[perm], rtol=0, atol=0)
    torch.testing.assert_close(augmented(np.arange(3, 9)), whole[3:9], rtol=0, atol=0)
    assert not torch.equal(whole, plain)  # it does augment
    other_epoch = crop_flip_params(visit_seeds(9, 3, ids), 4)
    assert not np.array_equal(other_epoch[0], crop_flip_params(visit_seeds(9, 2, ids), 4)[0])


def test_path_choice_budget_and_fallbacks(synthetic_dataset):
    manifest = load_manifest(synthetic_dataset)  # 8x8 grey: 64 bytes an image
    def cfg(**kv):
        return load_config(None, [f"data.root={synthetic_dataset}", *(f"{k}={v}" for k, v in kv.items())])
    assert choose_path(cfg(), manifest, 1000)[0] == "device"
    assert choose_path(cfg(**{"train.data_path": "loader"}), manifest, 1000)[0] == "loader"
    path, why = choose_path(cfg(**{"train.device_data_budget_mb": 1}), manifest, 20_000)
    assert path == "loader" and "exceeds train.device_data_budget_mb=1" in why
    path, why = choose_path(cfg(**{"data.train_transform": "random_resized_crop",
                                   "data.image_size": 8}), manifest, 100)
    assert path == "loader" and "random_resized_crop" in why
    with pytest.raises(UserError, match="train.data_path.*device_data_budget_mb=1"):
        choose_path(cfg(**{"train.data_path": "device", "train.device_data_budget_mb": 1}),
                    manifest, 20_000)
