"""RUN_DIR/metrics.jsonl: what a real run writes (every event with its fields), torn lines after a
kill, and the same records reaching TensorBoard through Accelerate's tracker."""

import importlib.util
import json

import pytest

from tests.mp import run_module, tail
from tidal_dist.job.errors import UserError
from tidal_dist.telemetry import Telemetry, check_trackers, read_records
from tidal_dist.telemetry.stream import MetricsStream

EPOCHS, CYCLES = 2, 2
HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def tiny(root, run_dir, *extra):
    return ["run", f"data.root={root}", "data.num_workers=0", "model.backbone=small_cnn",
            "model.width=4", f"train.epochs={EPOCHS}", "train.batch_size=16",
            "run.log_every=1", "al.initial=20", "al.budget=10", f"al.cycles={CYCLES}",
            "al.subset_size=40", "al.score_batch_size=32", f"run.dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def real_run(synthetic_dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stream") / "run"
    trackers = ["run.trackers=[tensorboard]"] if HAVE_TENSORBOARD else []
    proc = run_module(tiny(synthetic_dataset, run_dir, *trackers))
    assert proc.returncode == 0, tail(proc)
    return run_dir


def test_a_run_streams_every_event_with_its_fields(real_run):
    records = read_records(real_run / "metrics.jsonl")
    kinds = [r["event"] for r in records]
    assert kinds[0] == "start" and records[0]["committed_cycles"] == 0
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [(r["cycle"], r["epoch"]) for r in epochs] == [(c, e) for c in range(CYCLES)
                                                         for e in range(EPOCHS)]
    for r in epochs:
        assert {"loss", "ce", "kl", "lr", "samples", "seconds", "samples_per_s", "time"} <= set(r)
        assert r["samples"] == 20 + 10 * r["cycle"] and r["samples_per_s"] > 0 and r["lr"] > 0
    steps = [r for r in records if r["event"] == "step"]
    assert steps and {"cycle", "epoch", "step", "loss", "ce", "kl", "lr", "samples_per_s"} <= set(steps[0])
    assert len({(r["cycle"], r["epoch"], r["step"]) for r in steps}) == len(steps)
    phases = [(r["cycle"], r["phase"]) for r in records if r["event"] == "phase"]
    assert phases == [(c, p) for c in range(CYCLES) for p in ("evaluate", "score")]
    evaluate = [r for r in records if r["event"] == "phase" and r["phase"] == "evaluate"]
    cycles = [r for r in records if r["event"] == "cycle"]
    assert [r["cycle"] for r in cycles] == list(range(CYCLES))
    for r, ev in zip(cycles, evaluate):
        m = json.loads((real_run / "cycles" / f"cycle_{r['cycle']:04d}" / "metrics.json").read_text())
        assert r["accuracy"] == m["accuracy"] == ev["accuracy"] and r["labeled"] == m["labeled"]
        assert set(r["seconds"]) == {"train", "evaluate", "score", "select", "commit"}
        assert r["seconds"]["commit"] == pytest.approx(m["seconds"]["commit"])
    times = [r["time"] for r in records]
    assert times == sorted(times)


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="tensorboard is not installed (pip install "
                    "'tidal_dist[tensorboard]'); the JSONL stream is tested without it")
def test_tensorboard_gets_the_same_numbers(real_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(real_run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/ce", "train/kl", "train/lr", "al/accuracy", "step/loss",
            "evaluate/accuracy", "score/seconds"} <= tags
    records = read_records(real_run / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["event"] == "epoch"]
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(losses, rel=1e-6)
    acc_by_labels = {e.step: e.value for e in acc.Scalars("al/accuracy")}
    for r in records:
        if r["event"] == "cycle":
            assert acc_by_labels[r["labeled"]] == pytest.approx(r["accuracy"], rel=1e-6)


def test_a_torn_last_line_is_closed_and_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"time":1,"event":"start"}\n{"time":2,"event":"ep')  # killed mid-write
    stream = MetricsStream(path)
    stream.write("epoch", cycle=0, epoch=0, loss=float("nan"))
    stream.close()
    records = read_records(path)
    assert [r["event"] for r in records] == ["start", "epoch"]
    assert records[1]["loss"] is None  # NaN is not JSON


def test_only_the_main_process_writes(tmp_path):
    t = Telemetry.open(tmp_path, is_main=False, tracker_names=[])
    t.epoch(0, 0, 1, samples=1, seconds=1.0, lr=0.1, loss=1.0)
    t.close()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_tracker_whose_package_is_missing_is_refused_before_the_run():
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(UserError, match="'wandb' needs the wandb package"):
        check_trackers(["wandb"])


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_gets_the_resolved_config_as_hparams(real_run):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import plugin_data_pb2

    from tidal_dist.config import flatten, load_config

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(real_run / "tensorboard"))
    mux.Reload()
    found = {}
    for run in mux.Runs():
        content = mux.PluginRunToTagToContent("hparams").get(run, {})
        if "_hparams_/session_start_info" in content:
            data = plugin_data_pb2.HParamsPluginData.FromString(
                content["_hparams_/session_start_info"])
            for key, value in data.session_start_info.hparams.items():
                kind = value.WhichOneof("kind")
                found[key] = getattr(value, kind)
    config = flatten(load_config(real_run / "config.yaml"))
    assert set(found) == set(config)
    assert found["train.epochs"] == EPOCHS and found["al.cycles"] == CYCLES
    assert found["model.backbone"] == "small_cnn" and found["run.dir"] == str(real_run)
    assert found["train.lr_decay_at"] == "[0.8]" and found["data.imbalance_ratio"] == "null"
