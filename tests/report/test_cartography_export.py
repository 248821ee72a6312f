"""The Dataset Cartography export: files and records as its loader reads them, log-probabilities
whose softmax gives back the recorded probabilities, and refusals with their reasons."""

import json

import numpy as np
import pytest

from tests.report.rundirs import random_probs, write_td
from tidal_dist.report.cartography import ExportRefused, export_cycle, read_training_dynamics
from tidal_dist.report.datamaps import load_datamap


def softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.fixture
def recorded(tmp_path):
    n, classes, epochs = 40, 5, 3
    ids = (np.arange(n) * 7 + 1000).astype(np.int64)
    labels = (ids % classes).astype(np.int64)
    probs = random_probs(epochs, n, classes, seed=5)
    probs[0, 0] = np.array([1, 0, 0, 0, 0], dtype=np.float32)  # an exact zero: log floor
    d = tmp_path / "run" / "cycles" / "cycle_0000"
    write_td(d, ids, labels, probs)
    return d, ids, labels, probs


def test_export_round_trips(recorded, tmp_path):
    d, ids, labels, probs = recorded
    out = tmp_path / "export"
    assert export_cycle(d, out, max_classes=100) == len(probs)
    files = sorted(p.name for p in (out / "training_dynamics").iterdir())
    assert files == [f"dynamics_epoch_{e}.jsonl" for e in range(len(probs))]  # nothing else
    first = json.loads((out / "training_dynamics" / "dynamics_epoch_1.jsonl").read_text()
                       .splitlines()[0])
    assert set(first) == {"guid", "logits_epoch_1", "gold"}
    dynamics = read_training_dynamics(out)
    assert sorted(dynamics) == ids.tolist()
    for i, guid in enumerate(ids.tolist()):
        assert dynamics[guid]["gold"] == labels[i]
        assert len(dynamics[guid]["logits"]) == len(probs)
        for e, logits in enumerate(dynamics[guid]["logits"]):
            np.testing.assert_allclose(softmax(logits), probs[e, i], atol=2e-6)


def test_cartography_metrics_from_the_export_match_the_data_map(recorded, tmp_path):
    d, ids, labels, probs = recorded
    export_cycle(d, tmp_path / "export", max_classes=100)
    dynamics = read_training_dynamics(tmp_path / "export")
    dm = load_datamap(d)
    for i, guid in enumerate(ids.tolist()):
        trend = [softmax(lg)[dynamics[guid]["gold"]] for lg in dynamics[guid]["logits"]]
        assert np.mean(trend) == pytest.approx(dm.confidence[i], abs=2e-6)
        assert np.std(trend) == pytest.approx(dm.variability[i], abs=2e-6)


def test_too_many_classes_is_refused_with_the_reason(recorded, tmp_path):
    d, *_ = recorded
    with pytest.raises(ExportRefused, match="5 classes is above the export limit of 4"):
        export_cycle(d, tmp_path / "export", max_classes=4)
    assert not (tmp_path / "export").exists()


def test_no_per_epoch_records_is_refused_with_the_reason(tmp_path):
    d = tmp_path / "cycle_0000"
    write_td(d, np.arange(3), np.zeros(3, dtype=np.int64), random_probs(2, 3, 2), epochs=False)
    with pytest.raises(ExportRefused, match="train.record_epoch_probs=true"):
        export_cycle(d, tmp_path / "export", max_classes=100)


def test_a_gap_in_the_epochs_is_refused(recorded, tmp_path):
    d, *_ = recorded
    (d / "td" / "epochs" / "probs_e0001.npy").unlink()
    with pytest.raises(ExportRefused, match=r"epochs recorded are \[0, 2\]"):
        export_cycle(d, tmp_path / "export", max_classes=100)
