"""benchmarks/run.py --quick end to end, so the benchmark suite never rots."""

import json
import subprocess
import sys

from tests.mp import REPO, cpu_env


def test_quick_benchmark_run_writes_every_result_with_the_machine(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--out", str(out),
                           "--work", str(tmp_path / "work")],
                          cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("train_step_cpu", "training_path", "td_gather", "scoring", "readers", "strategies",
                 "sync_batchnorm_cpu", "timm_models_cpu", "eval_passes", "summary"):
        data = json.loads((out / f"{name}.json").read_text())
        assert data["machine"]["cores"] >= 1 and data["machine"]["cpu"], name
        assert (out / f"{name}.md").read_text().startswith(f"# {name}")
    summary = json.loads((out / "summary.json").read_text())
    names = " | ".join(f["figure"] for f in summary["figures"])
    for figure in ("TD overhead", "training path (device", "training path (loader",
                   "TD gather vs file fold", "TD gather vs epoch", "scoring vs bare model(x)",
                   "peak RSS", "top-k", "per-sample strategies vs TiDAL-H", "BALD vs TiDAL-H",
                   "coreset selection step", "badge selection step", "train.sync_batchnorm step",
                   "TD overhead (timm:resnet10t", "frozen-feature path vs image path",
                   "evaluation + scoring passes, decoded vs streamed"):
        assert figure in names, f"{figure} missing from {names}"
    for f in summary["figures"]:
        assert isinstance(f["value"], float) and f["value"] > 0, f
    gather = json.loads((out / "td_gather.json").read_text())["results"][0]
    assert gather["device"]["run_dir_bytes_written"] == 0
    assert gather["file"]["run_dir_bytes_written"] > 0
