"""TD: the running-mean target against the reference code's update, and the committed buffers."""

import numpy as np
import pytest
import torch

from tidal_dist.dynamics.buffer import TDBuffer, write_buffers
from tidal_dist.dynamics.state import DeviceTD, EpochLayout


def test_targets_match_the_reference_running_mean_over_three_epochs(tmp_path):
    """Hand computation: the reference keeps p̄ and sets p̄ <- (p̄·e + p)/(e+1) at epoch e; the
    device rows give that target for each visit, one process, the epoch order shuffled."""
    ids = np.array([3, 7, 11])
    p = {i: [np.array(v, np.float32) for v in rows] for i, rows in {
        3: [[0.2, 0.3, 0.5], [0.4, 0.4, 0.2], [0.0, 0.9, 0.1]],
        7: [[0.6, 0.3, 0.1], [0.5, 0.5, 0.0], [0.7, 0.2, 0.1]],
        11: [[1 / 3, 1 / 3, 1 / 3], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]}.items()}
    layout = EpochLayout(3, 0, 0, 1, 3)  # 3 ids, epoch 0, seed 0, one process, batch 3
    td = DeviceTD(ids, 3, layout, 0, torch.device("cpu"))
    ref = {i: np.zeros(3, np.float32) for i in ids}
    for e in range(3):
        order = ids[td.layout.positions(0)[1]]  # the ids in this epoch's visit order
        probs = torch.from_numpy(np.stack([p[i][e] for i in order]))
        got = td.targets(0, probs).numpy()
        for row, i in enumerate(order):
            ref[i] = (ref[i] * e + p[i][e]) / (e + 1)
            np.testing.assert_allclose(got[row], ref[i], rtol=1e-6)
        td.record(0, probs, torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.bool))
        if e < 2:
            td.advance()
    td.save(tmp_path)
    buf = TDBuffer(tmp_path)
    assert buf.count.tolist() == [3, 3, 3]
    np.testing.assert_allclose(buf.sum[0], [0.6, 1.6, 0.8], rtol=1e-6)  # id 3, by hand
    np.testing.assert_allclose(buf.mean()[1], [0.6, 1.0 / 3, 0.2 / 3], rtol=1e-5)  # id 7


def test_buffers_are_complete_memmaps_and_name_unknown_ids(tmp_path):
    def fill(arrays):
        arrays["sum"][2] = [0.1, 0.2, 0.7]
        arrays["count"][2] = 1

    write_buffers(tmp_path, np.array([4, 5, 9, 12]), 3, fill)
    buf = TDBuffer(tmp_path)
    assert isinstance(buf.sum, np.memmap) and not buf.sum.flags.writeable
    np.testing.assert_allclose(buf.sum[buf.rows(np.array([9]))[0]], [0.1, 0.2, 0.7], rtol=1e-6)
    assert buf.num_classes == 3 and buf.stats.shape == (4, 3)
    with pytest.raises(KeyError, match="99"):
        buf.rows(np.array([5, 99]))
    with pytest.raises(ValueError, match="ascending"):
        write_buffers(tmp_path / "bad", np.array([5, 4]), 3, lambda arrays: None)
    (tmp_path / "stats.npy").unlink()
    with pytest.raises(Exception, match="lacks stats.npy"):
        TDBuffer(tmp_path)
