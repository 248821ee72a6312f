"""Device-resident TD rows: the exchange plan, exact sums/counts/stats over epochs, snapshots,
and real 2- and 3-process runs (all_to_all + gather on gloo)."""

import numpy as np
import pytest
import torch

from tests.mp import tail, torchrun
from tests.workers.dynamics_worker import probs_of
from tidal_dist.data.readers import epoch_assignment
from tidal_dist.dynamics.buffer import TDBuffer
from tidal_dist.job.errors import UserError
from tidal_dist.dynamics.state import (DeviceTD, EpochLayout, check_epoch_probs_size, exchange_plan)


@pytest.mark.parametrize("n,world,batch", [(61, 1, 4), (61, 2, 5), (61, 3, 4), (7, 4, 3)])
def test_layout_matches_epoch_assignment_and_the_plan_moves_every_row(n, world, batch):
    ids = np.arange(n) * 2 + 5
    for r in range(world):
        rank_ids, valid = epoch_assignment(ids, 3, 9, r, world, batch_size=batch)
        pos, rows = EpochLayout(n, 3, 9, world, batch).positions(r)
        np.testing.assert_array_equal(pos, np.flatnonzero(valid))
        np.testing.assert_array_equal(ids[rows], rank_ids[valid])
    # Simulate three exchanges with numpy: a storage row holds its id row as its value.
    layout = EpochLayout(n, 3, 9, world, batch)
    storage, rows_at = {}, {}
    for r in range(world):
        pos, rows = layout.positions(r)
        rows_at[r] = np.full(layout.per_rank, -1)
        rows_at[r][pos] = rows
        storage[r] = rows_at[r].copy()
    for _ in range(3):
        new = layout.next()
        plans = [exchange_plan(layout, new, r, rows_at[r]) for r in range(world)]
        nxt = {}
        for r in range(world):
            received = []
            for src in range(world):
                plan = plans[src]
                start = sum(plan.send_counts[:r])
                received.append(storage[src][plan.send_slots[start:start + plan.send_counts[r]]])
            assert plans[r].recv_counts == [len(x) for x in received]
            assert plans[r].send_counts[r] == plans[r].recv_counts[r] == 0  # nothing to itself
            kept = storage[r][plans[r].keep_slots]
            nxt[r] = np.full(new.per_rank, -1)
            nxt[r][:sum(map(len, received)) + len(kept)] = np.concatenate([*received, kept])
        for r in range(world):
            plan = plans[r]
            np.testing.assert_array_equal(nxt[r], plan.new_rows_at)  # storage holds what it says
            pos, rows = new.positions(r)
            np.testing.assert_array_equal(nxt[r][plan.new_slot[pos]], rows)  # each visit its row
            assert len(set(plan.new_slot.tolist())) == new.per_rank  # distinct rows
            padding = np.setdiff1d(np.arange(new.per_rank), pos)
            assert (nxt[r][plan.new_slot[padding]] == -1).all()  # padding reads free rows
        storage = nxt
        rows_at = {r: plans[r].new_rows_at for r in range(world)}
        layout = new


def run_epochs(td, ids, labels, epochs, seed, batch, c, stop_at=None):
    for epoch in range(td.layout.epoch, epochs):
        rank_ids, valid = epoch_assignment(ids, epoch, seed, 0, 1, batch_size=batch)
        for lo in range(0, len(rank_ids), batch):
            if stop_at == (epoch, lo):
                return
            bid = rank_ids[lo:lo + batch]
            td.record(lo, torch.from_numpy(probs_of(bid, epoch, c)),
                      torch.from_numpy(labels[np.searchsorted(ids, bid)]),
                      torch.from_numpy(valid[lo:lo + batch]))
        if epoch + 1 < epochs:
            td.advance()


def direct(ids, labels, epochs, c):
    p = np.stack([probs_of(ids, e, c) for e in range(epochs)]).astype(np.float64)  # [E, N, C]
    gold = p[:, np.arange(len(ids)), labels]
    return {"sum": p.sum(0), "count": np.full(len(ids), epochs),
            "stats": np.stack([gold.sum(0), (gold ** 2).sum(0),
                               (p.argmax(2) == labels).sum(0)], axis=1)}


def test_one_process_sums_counts_and_stats_equal_a_direct_computation(tmp_path):
    n, c, epochs, batch, seed = 23, 5, 4, 4, 3
    ids = np.arange(n, dtype=np.int64) * 3 + 1
    labels = (ids * 7) % c
    td = DeviceTD(ids, c, EpochLayout(n, 0, seed, 1, batch), 0, torch.device("cpu"))
    run_epochs(td, ids, labels, epochs, seed, batch, c)
    td.save(tmp_path / "td")
    buf, want = TDBuffer(tmp_path / "td"), direct(ids, labels, epochs, c)
    np.testing.assert_array_equal(buf.ids, ids)
    np.testing.assert_array_equal(buf.count, want["count"])
    np.testing.assert_allclose(buf.sum, want["sum"], rtol=1e-5)
    assert buf.stats.dtype == np.float64 and buf.stats.shape == (n, 3)
    np.testing.assert_allclose(buf.stats, want["stats"], rtol=1e-6)


def test_a_mid_epoch_snapshot_resumes_to_the_uninterrupted_result(tmp_path):
    n, c, epochs, batch, seed = 23, 5, 3, 4, 3
    ids = np.arange(n, dtype=np.int64)
    labels = ids % c
    ref = DeviceTD(ids, c, EpochLayout(n, 0, seed, 1, batch), 0, torch.device("cpu"))
    run_epochs(ref, ids, labels, epochs, seed, batch, c)
    ref.save(tmp_path / "ref")
    first = DeviceTD(ids, c, EpochLayout(n, 0, seed, 1, batch), 0, torch.device("cpu"))
    run_epochs(first, ids, labels, epochs, seed, batch, c, stop_at=(1, 8))
    first.save(tmp_path / "snap")
    again = DeviceTD(ids, c, EpochLayout(n, 1, seed, 1, batch), 0, torch.device("cpu"))
    again.load(tmp_path / "snap")
    rank_ids, valid = epoch_assignment(ids, 1, seed, 0, 1, batch_size=batch)
    for lo in range(8, len(rank_ids), batch):  # the rest of epoch 1, then epoch 2
        bid = rank_ids[lo:lo + batch]
        again.record(lo, torch.from_numpy(probs_of(bid, 1, c)),
                     torch.from_numpy(labels[bid]), torch.from_numpy(valid[lo:lo + batch]))
    again.advance()
    run_epochs(again, ids, labels, epochs, seed, batch, c)
    again.save(tmp_path / "resumed")
    a, b = TDBuffer(tmp_path / "ref"), TDBuffer(tmp_path / "resumed")
    np.testing.assert_array_equal(a.count, b.count)
    np.testing.assert_array_equal(a.sum, b.sum)
    np.testing.assert_array_equal(a.stats, b.stats)


def test_padding_rows_are_never_counted():
    ids = np.arange(5, dtype=np.int64)
    td = DeviceTD(ids, 2, EpochLayout(5, 0, 0, 1, 4), 0, torch.device("cpu"))
    assert td.layout.per_rank == 8
    p = torch.full((4, 2), 0.5)
    td.record(4, p, torch.zeros(4, dtype=torch.long), torch.tensor([True, False, False, False]))
    assert td.aux[:, 0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert td.sum[5:].abs().sum().item() == 0
    torch.testing.assert_close(td.targets(4, p)[1], torch.tensor([0.5, 0.5]))  # finite: zeros + p


def test_epoch_probs_too_large_are_refused_with_the_reason():
    check_epoch_probs_size(10_000, 10, 200)  # CIFAR-10: 80 MB, fine
    with pytest.raises(UserError, match=r"train.record_epoch_probs.*GiB.*copied at every commit"):
        check_epoch_probs_size(100_000, 8142, 200)  # iNaturalist: 651 GB


@pytest.mark.parametrize("world", [2, 3])
def test_real_processes_gather_exactly_once(tmp_path, world):
    n, c, epochs, batch = 41, 6, 3, 4
    proc = torchrun(world, ["tests/workers/dynamics_worker.py", str(tmp_path), str(n), str(c),
                            str(epochs), str(batch)])
    assert proc.returncode == 0, tail(proc)
    for r in range(world):
        assert (tmp_path / f"targets_ok.rank{r}").read_text() == "True", f"rank {r} targets"
    ids = np.arange(n, dtype=np.int64) * 3 + 7
    buf, want = TDBuffer(tmp_path / "td"), direct(ids, ids % c, epochs, c)
    np.testing.assert_array_equal(buf.ids, ids)
    np.testing.assert_array_equal(buf.count, want["count"])
    np.testing.assert_allclose(buf.sum, want["sum"], rtol=1e-5)
    np.testing.assert_allclose(buf.stats, want["stats"], rtol=1e-5)
    for e in range(epochs):
        probs = np.load(tmp_path / "epochs" / f"probs_e{e:04d}.npy")
        assert probs.dtype == np.float32 and probs.shape == (n, c)
        np.testing.assert_allclose(probs, probs_of(ids, e, c), rtol=1e-6)
