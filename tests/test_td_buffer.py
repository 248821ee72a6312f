"""TD buffers: the running-mean target, folding visits, visit recorders (the file-fold baseline)."""

import numpy as np
import pytest
import torch

from tidal_dist.td_buffer import TDBuffer, VisitRecorder, fold_visit_files


def test_targets_match_the_reference_running_mean_over_three_epochs(tmp_path):
    """Hand computation: the reference keeps p̄ and sets p̄ <- (p̄·e + p)/(e+1) at epoch e."""
    ids = np.array([7, 3, 11])
    buf = TDBuffer.create(tmp_path, ids, num_classes=3)
    # softmax vectors per epoch for ids 3, 7, 11 (rows in ascending-id order)
    p = [np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]], np.float32),
         np.array([[0.4, 0.4, 0.2], [0.5, 0.5, 0.0], [0.1, 0.8, 0.1]], np.float32),
         np.array([[0.0, 0.9, 0.1], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], np.float32)]
    ref = np.zeros((3, 3), np.float32)
    for e in range(3):
        got = buf.targets(np.array([3, 7, 11]), torch.from_numpy(p[e])).numpy()
        ref = (ref * e + p[e]) / (e + 1)
        np.testing.assert_allclose(got, ref, rtol=1e-6)
        buf.fold(np.array([3, 7, 11]), p[e])
    # after 3 epochs: sum and count by hand
    np.testing.assert_allclose(buf.sum[0], [0.6, 1.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(buf.sum[2], [1 / 3 + 0.4, 1 / 3 + 1.1, 1 / 3 + 0.5], rtol=1e-6)
    assert buf.count.tolist() == [3, 3, 3]
    np.testing.assert_allclose(buf.mean()[1], [0.6, 1.0 / 3, 0.2 / 3], rtol=1e-5)


def test_fold_counts_repeated_ids_and_rejects_unknown(tmp_path):
    buf = TDBuffer.create(tmp_path, np.arange(5), num_classes=2)
    buf.fold(np.array([1, 1, 4]), np.array([[1, 0], [0, 1], [0.5, 0.5]], np.float32))
    assert buf.count.tolist() == [0, 2, 0, 0, 1]
    np.testing.assert_allclose(buf.sum[1], [1, 1])
    with pytest.raises(KeyError, match="99"):
        buf.fold(np.array([99]), np.ones((1, 2), np.float32))


def test_recorders_fold_once_and_reset(tmp_path):
    buf = TDBuffer.create(tmp_path, np.arange(6), num_classes=2)
    recs = [VisitRecorder(tmp_path, r, capacity=3, num_classes=2) for r in range(2)]
    recs[0].record(np.array([0, 2, 4]), np.full((3, 2), 0.5, np.float32))
    recs[1].record(np.array([1, 3]), np.tile(np.float32([[0.25, 0.75]]), (2, 1)))  # one short
    for r in recs:
        r.flush()
    assert fold_visit_files(buf, tmp_path, world_size=2) == 5
    assert buf.count.tolist() == [1, 1, 1, 1, 1, 0]
    for r in recs:
        r.reset()
    assert fold_visit_files(buf, tmp_path, world_size=2) == 0  # nothing folded twice
    assert buf.count.tolist() == [1, 1, 1, 1, 1, 0]
    with pytest.raises(RuntimeError, match="overflow"):
        recs[0].record(np.arange(4), np.zeros((4, 2), np.float32))


def test_buffers_are_memmaps_and_readers_see_folds(tmp_path):
    writer = TDBuffer.create(tmp_path, np.arange(4), num_classes=3)
    reader = TDBuffer(tmp_path)
    assert isinstance(reader.sum, np.memmap) and not reader.sum.flags.writeable
    writer.fold(np.array([2]), np.array([[0.1, 0.2, 0.7]], np.float32))
    writer.flush()
    np.testing.assert_allclose(TDBuffer(tmp_path).sum[2], [0.1, 0.2, 0.7], rtol=1e-6)
