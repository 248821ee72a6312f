"""A split kept decoded on the device for evaluation and scoring (data/decoded_split.py): the
same shares and the same batches, to the bit, as streaming the shards, each id decoded once."""

import numpy as np
import pytest
import torch

from tidal_dist.config import load_config
from tidal_dist.data.decoded_split import DecodedSplit, choose_split_path
from tidal_dist.data.manifest import load_manifest
from tidal_dist.data.readers import StreamingDataset, stream_loader
from tidal_dist.data.transforms import build_transform


def config(root, **kv):
    return load_config(None, [f"data.root={root}", *(f"{k}={v}" for k, v in kv.items())])


def streamed(root, manifest, split, ids, rank, world, batch):
    dataset = StreamingDataset(root, split, build_transform("none", manifest, train=False),
                               ids=ids, rank=rank, world_size=world)
    return [(i, y, x) for i, x, y in stream_loader(dataset, batch, 0)]


@pytest.mark.parametrize("world", [1, 2])
def test_batches_equal_the_streamed_ones_and_each_id_is_decoded_once(synthetic_dataset, world):
    manifest = load_manifest(synthetic_dataset)
    info = manifest.split("pool")
    ids = np.sort(np.random.default_rng(0).choice(info.ids(), 70, replace=False))
    for rank in range(world):
        split = DecodedSplit(config(synthetic_dataset), manifest, "pool", torch.device("cpu"))
        share = split.share(ids, rank, world)
        got = list(split.batches(share, 16))
        want = streamed(synthetic_dataset, manifest, "pool", ids, rank, world, 16)
        assert len(got) == len(want) > 0
        for (i, y, x), (i2, y2, x2) in zip(got, want):
            assert torch.equal(i, i2) and torch.equal(y, y2) and torch.equal(x, x2)
        assert split.have.sum() == len(share)
        # a later pass over other ids decodes only those; the decoded ones are not read again
        decoded = split.images.images.clone()
        split.reader.close()
        split.reader = None  # any read now fails
        again = list(split.batches(share[::2], 16))
        assert torch.equal(torch.cat([x for _, _, x in again]),
                           torch.cat([x for _, _, x in got])[::2])
        assert torch.equal(split.images.images, decoded)


def test_the_whole_test_split_and_its_labels(synthetic_dataset):
    manifest = load_manifest(synthetic_dataset)
    split = DecodedSplit(config(synthetic_dataset), manifest, "test", torch.device("cpu"))
    got = list(split.batches(split.share(None, 0, 1), 32))
    want = streamed(synthetic_dataset, manifest, "test", None, 0, 1, 32)
    assert torch.equal(torch.cat([y for _, y, _ in got]), torch.cat([y for _, y, _ in want]))
    assert torch.equal(torch.cat([x for _, _, x in got]), torch.cat([x for _, _, x in want]))


def test_which_splits_are_kept_decoded(synthetic_dataset):
    manifest = load_manifest(synthetic_dataset)
    assert choose_split_path(config(synthetic_dataset), manifest, "pool")[0] == "decoded"
    path, why = choose_split_path(config(synthetic_dataset, **{"train.data_path": "loader"}),
                                  manifest, "pool")
    assert (path, why) == ("streamed", "train.data_path=loader")
    path, why = choose_split_path(config(synthetic_dataset, **{"data.eval_transform":
                                                               "resize_center_crop"}),
                                  manifest, "test")
    assert path == "streamed" and "resize_center_crop" in why
    path, why = choose_split_path(config(synthetic_dataset, **{"train.device_data_budget_mb": 0}),
                                  manifest, "pool")
    assert path == "streamed" and "train.device_data_budget_mb=0" in why
