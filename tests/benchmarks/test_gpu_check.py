"""benchmarks/gpu_check.sh --cpu-dry-run end to end: the script a GPU box runs once, kept working
on machines without one (the box itself is not here; the CPU stands in at tiny sizes)."""

import json
import subprocess
import sys

from tests.mp import REPO, cpu_env, tail


def gpu_check(*args, env=None):
    return subprocess.run(["bash", "benchmarks/gpu_check.sh", *map(str, args)], cwd=REPO,
                          env=cpu_env({"PYTHON": sys.executable, **(env or {})}),
                          capture_output=True, text=True, timeout=300)


def test_cpu_dry_run_measures_every_figure_and_runs_the_product_end_to_end(tmp_path):
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    wheels.mkdir()  # everything is installed here: nothing to take from the folder
    proc = gpu_check(wheels, out, "--cpu-dry-run")
    assert proc.returncode == 0, tail(proc)
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["mode"] == "cpu-dry-run"
    train = result["training"]
    for path, epochs in (("device_path", "train_epochs"), ("loader_path", "loader_epochs")):
        assert train[path]["img_s"] > 0
        assert len(train[path]["epoch_s"]) == result["sizes"][epochs]
    assert train["td_overhead"]["ce_img_s"] > 0 and train["td_overhead"]["ratio"] > 0
    assert result["cifar10_trial_projection"]["total_s"] > 0
    jpeg = result["jpeg_scoring"]
    assert jpeg["tensor_decode"]["n"] == jpeg["pil_decode"]["n"] > 0
    e2e = result["end_to_end"]
    assert e2e["rc"] == 0, e2e["log_tail"]
    assert [c["labeled"] for c in e2e["cycles"]] == [40, 60]
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# gpu_check") and "FAILED" not in md


def test_a_missing_wheel_folder_or_wheel_is_named_with_exit_2(tmp_path):
    proc = gpu_check(tmp_path / "nowhere", tmp_path / "out", "--cpu-dry-run")
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "does not exist" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = gpu_check(empty, tmp_path / "out", "--cpu-dry-run", "--force-install")
    assert proc.returncode == 2, tail(proc)
    assert "lacks a wheel" in proc.stderr and str(empty) in proc.stderr
    assert not (tmp_path / "out" / "gpu_check.json").exists()
