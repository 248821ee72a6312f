"""TypiClust's selection on points with a known answer: one pick per blob, the most typical point
of each (brute force over the blob), uncovered clusters first, biggest first."""

import numpy as np
import pytest
import torch

from tidal_dist.selection.typiclust import typicality, typiclust


def blobs(sizes, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0], [50, 0], [0, 50], [50, 50]], dtype=np.float32)[:len(sizes)]
    points, owner = [], []
    for b, n in enumerate(sizes):
        offsets = rng.normal(size=(n, 2)).astype(np.float32)
        points.append(centres[b] + offsets)
        owner += [b] * n
    return torch.from_numpy(np.concatenate(points)), np.array(owner), centres


def most_typical(points, owner, blob, k=20):
    """Brute force: the blob's point with the smallest mean distance to its k nearest others."""
    rows = np.flatnonzero(owner == blob)
    x = points.numpy()[rows].astype(np.float64)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    mean_knn = np.sort(d, axis=1)[:, 1:k + 1].mean(axis=1)
    return int(rows[np.argmin(mean_knn)])


def test_one_typical_pick_per_blob_biggest_first():
    points, owner, _ = blobs([30, 50, 40])
    picks, values = typiclust(points, None, k=3, seed=1)
    assert owner[picks].tolist() == [1, 2, 0]  # blob sizes 30, 50, 40: biggest cluster first
    assert picks.tolist() == [most_typical(points, owner, b) for b in (1, 2, 0)]
    assert np.all(values > 0)


def test_clusters_holding_labeled_points_come_last():
    points, owner, centres = blobs([30, 50, 40])
    labeled = torch.from_numpy(centres[1:2] + 0.5)  # blob 1 (the biggest) is covered
    picks, _ = typiclust(points, labeled, k=2, seed=1)
    assert sorted(owner[picks].tolist()) == [0, 2]


def test_more_picks_than_clusters_take_the_next_most_typical():
    points, owner, _ = blobs([6, 6])
    picks, _ = typiclust(points, None, k=5, seed=0)
    assert len(set(picks.tolist())) == 5 and set(owner[picks]) == {0, 1}


def test_typicality_is_the_inverse_mean_distance_to_the_nearest_neighbours():
    x = torch.tensor([[0.0], [1.0], [3.0]])
    # neighbours=1: point 0's nearest is at 1, point 1's at 1, point 2's at 2
    assert typicality(x, neighbours=1).tolist() == pytest.approx([1.0, 1.0, 0.5])
    assert typicality(x[:1]).tolist() == [0.0]
