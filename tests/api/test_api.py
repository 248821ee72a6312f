"""The Python API: the docs' example runs as written; a notebook's Ctrl-C during an in-process
run checkpoints and raises KeyboardInterrupt, and the process's own handlers are back afterwards;
configs from keyword sections; reading runs and models."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mp import REPO, cpu_env
from tidal_dist import api

SMALL = ["data.num_workers=0", "model.backbone=small_cnn", "model.width=4", "train.epochs=1",
         "train.batch_size=16", "al.initial=20", "al.budget=6", "al.subset_size=40"]


def run_script(code: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    script = cwd / "script.py"
    script.write_text(code)
    # SIGINT back to its default in the child, as in a terminal or a notebook kernel: a suite
    # started in the background (`cmd &`, nohup) inherits SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler of its own
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=cpu_env(env),
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_the_documented_example_runs(tmp_path):
    text = (REPO / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    proc = run_script(blocks[0], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (tmp_path / "runs" / "nb" / "cycles" / "cycle_0001" / "model.pt").is_file()
    printed = [line.split() for line in proc.stdout.splitlines() if re.match(r"^[01] \d+ ", line)]
    assert [(row[0], row[1]) for row in printed] == [("0", "20"), ("1", "26")]
    assert api.Run(tmp_path / "runs" / "nb").cycle(0).metrics["strategy"] == "smallest_max_logit"


INTERRUPTED = """
import os, signal, sys
from tidal_dist import api
from tidal_dist.job import preemption

cfg = api.load_config(None, {overrides!r} + ["al.cycles=2"])
before = signal.getsignal(signal.SIGINT)
os.environ["TIDAL_DIST_CRASH_AT"] = "sigint_epoch:0:1"   # Ctrl-C at step 1 of the first epoch
try:
    api.run_experiment(cfg)
    print("NO INTERRUPT")
except KeyboardInterrupt as e:
    print("INTERRUPTED:", e)
run = api.Run(cfg.run.dir)
print("STATUS", run.status, len(run.cycles))
assert signal.getsignal(signal.SIGINT) is before, signal.getsignal(signal.SIGINT)
assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
assert signal.set_wakeup_fd(-1) == -1
try:                          # the notebook's own interrupt works again
    os.kill(os.getpid(), signal.SIGINT)
    import time; time.sleep(5)
    print("SIGINT IGNORED")
except KeyboardInterrupt:
    print("LATER SIGINT RAISED")
del os.environ["TIDAL_DIST_CRASH_AT"]
run = api.run_experiment(cfg)   # resumes from the checkpoint
print("STATUS", run.status, len(run.cycles))
print("AFTER", signal.getsignal(signal.SIGINT) is before)
"""


def test_an_interrupt_during_an_in_process_run(synthetic_dataset, tmp_path):
    overrides = [f"data.root={synthetic_dataset}", f"run.dir={tmp_path / 'run'}",
                 "train.checkpoint_every=1", *SMALL]
    proc = run_script(INTERRUPTED.format(overrides=overrides), tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:] + proc.stderr[-3000:]
    assert "INTERRUPTED: run stopped with a checkpoint" in out
    assert "STATUS preempted 0" in out
    assert "LATER SIGINT RAISED" in out
    assert "STATUS done 2" in out and "AFTER True" in out
    assert "resum" in proc.stderr + out  # the second call continued the run, not a fresh one


def test_config_from_keyword_sections(tmp_path):
    cfg = api.load_config(None, ["train.epochs=3"], train={"lr": 0.5, "lr_decay_at": [0.5]},
                          al={"oracle": "file"})
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.lr_decay_at) == (3, 0.5, [0.5])
    assert cfg.al.oracle == "file"
    with pytest.raises(api.UserError, match="train.epoch"):
        api.load_config(None, train={"epoch": 3})
    with pytest.raises(api.UserError, match="train.lr"):
        api.load_config(None, train={"lr": "fast"})
    with pytest.raises(api.UserError, match="run dir"):
        api.Run(tmp_path)


def test_model_of_a_run_without_cycles_is_refused(synthetic_dataset, tmp_path):
    cfg = api.load_config(None, [f"data.root={synthetic_dataset}", f"run.dir={tmp_path}"])
    from tidal_dist.config import bind_run_dir

    bind_run_dir(cfg, write=True)
    with pytest.raises(api.UserError, match="no committed cycle"):
        api.load_model(tmp_path)
