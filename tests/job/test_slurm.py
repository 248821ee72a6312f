"""SLURM: rank discovery from SLURM's variables (pure functions), and the launch kits
(launch/slurm/run.sbatch, multinode.sbatch) run by stand-in sbatch / srun / scontrol executables
(tests/slurm/) that start real local processes: a job signalled mid-cycle requeues itself on the
recorded outcome and its second start finishes with the result of an uninterrupted job."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.mp import REPO, cpu_env
from tidal_dist.job import distributed, outcome

STANDINS = REPO / "tests" / "slurm"

# --------------------------------------------------------------------------------------------
# Rank discovery


def test_hostlists_expand_like_scontrol_show_hostnames():
    assert distributed.expand_hostlist("gpu[01-03,7],login") == ["gpu01", "gpu02", "gpu03", "gpu7",
                                                                 "login"]
    assert distributed.expand_hostlist("a[1-2]-ib[08-09]") == ["a1-ib08", "a1-ib09", "a2-ib08",
                                                               "a2-ib09"]
    assert distributed.expand_hostlist("localhost") == ["localhost"]
    assert distributed.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]


def srun_env(**extra):
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[07-08]", "SLURM_NTASKS": "4",
           "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
           "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
           "SLURM_STEP_NODELIST": "node[07-08]"}
    env.update(extra)
    return env


def test_a_bare_srun_task_gets_torchrun_variables():
    assert distributed.launcher_env(srun_env()) == {
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1", "MASTER_ADDR": "node07", "MASTER_PORT": str(20000 + 4242)}


def test_launcher_and_user_settings_win():
    assert distributed.launcher_env(srun_env(RANK="0", WORLD_SIZE="8")) == {}  # torchrun inside
    got = distributed.launcher_env(srun_env(MASTER_ADDR="head", MASTER_PORT="1234"))
    assert "MASTER_ADDR" not in got and "MASTER_PORT" not in got


def test_the_batch_script_itself_is_not_a_step():
    """sbatch's script sees SLURM_PROCID=0 and SLURM_NTASKS=N too; a process started there
    alone must not wait for N-1 peers."""
    batch = {k: v for k, v in srun_env(SLURM_PROCID="0").items() if not k.startswith("SLURM_STEP")}
    assert distributed.launcher_env(batch) == {}


def test_rank_functions_read_slurm_inside_a_step(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for k, v in srun_env().items():
        monkeypatch.setenv(k, v)
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (3, 4, 1)
    assert distributed.launcher_name() == "srun"


# --------------------------------------------------------------------------------------------
# The kits, with stand-in SLURM commands


def job_config(tmp_path, root):
    # The loader path, so that SLURM's signal also reaches loader workers; a checkpoint every 5
    # epochs marks "mid-cycle" for the stand-in to signal at.
    cfg = {"data": {"root": str(root), "num_workers": 1, "train_transform": "crop_flip"},
           "model": {"backbone": "small_cnn", "width": 4},
           "train": {"epochs": 30, "batch_size": 16, "lr": 0.05, "checkpoint_every": 5,
                     "data_path": "loader"},
           "al": {"initial": 32, "budget": 10, "cycles": 2, "subset_size": 60,
                  "score_batch_size": 32},
           "run": {"seed": 5, "deterministic": True}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def sbatch(tmp_path, script, config, run_dir, options, env=None):
    state = tmp_path / "slurm-state"
    full_env = cpu_env({"PATH": f"{STANDINS}{os.pathsep}{os.environ['PATH']}",
                        "FAKE_SLURM_STATE": str(state), "PYTHON": sys.executable,
                        "REPO": str(REPO), **(env or {})})
    proc = subprocess.run(["sbatch", *options, str(REPO / "launch" / "slurm" / script), str(config),
                           f"run.dir={run_dir}"], cwd=tmp_path, env=full_env, capture_output=True,
                          text=True, timeout=900)
    job = proc.stdout.split()[-1] if proc.stdout.startswith("Submitted batch job") else None
    assert job is not None, proc.stdout + proc.stderr
    log = next(tmp_path.glob(f"slurm-*-{job}.out")).read_text()

    def lines(name):
        path = state / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return {"starts": lines("starts.jsonl"), "requeues": lines("requeues.jsonl"),
            "signals": lines("signals.jsonl"), "log": log, "job": job}


def cycles_of(run_dir, n=2):
    out = []
    for k in range(n):
        d = run_dir / "cycles" / f"cycle_{k:04d}"
        out.append((np.load(d / "labeled.npz")["ids"], np.load(d / "queried.npz")["ids"],
                    np.load(d / "queried.npz")["uncertainty"]))
    return out


def assert_same_cycles(got, ref):
    for (lab, q, u), (lab_r, q_r, u_r) in zip(got, ref):
        np.testing.assert_array_equal(lab, lab_r)
        np.testing.assert_array_equal(q, q_r)
        np.testing.assert_allclose(u, u_r, rtol=1e-5)


@pytest.fixture(scope="module")
def uninterrupted(synthetic_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slurm_ref")
    run_dir = tmp / "run"
    job = sbatch(tmp, "run.sbatch", job_config(tmp, synthetic_dataset), run_dir,
                 ["--nodes=1", "--ntasks-per-node=2"])
    assert [s["rc"] for s in job["starts"]] == [0] and not job["requeues"], job["log"][-3000:]
    record = outcome.read(run_dir)
    assert (record.status, record.world_size, record.launcher) == ("done", 2, "srun")
    return cycles_of(run_dir)


def test_run_sbatch_requeues_a_preempted_job_and_finishes_the_same(uninterrupted, synthetic_dataset,
                                                                   tmp_path):
    run_dir = tmp_path / "run"
    trigger = run_dir / "work" / "cycle_0001" / "ckpt" / "latest"
    job = sbatch(tmp_path, "run.sbatch", job_config(tmp_path, synthetic_dataset), run_dir,
                 ["--nodes=1", "--ntasks-per-node=2"], env={"FAKE_SLURM_SIGNAL_WHEN": str(trigger)})
    log = job["log"]
    # USR1 reached both tasks and their loader workers (4 processes), mid-cycle 1.
    assert job["signals"] == [{"job": job["job"], "signal": "USR1", "pids": 4}], log[-3000:]
    assert len(job["requeues"]) == 1
    assert [(s["restart"], s["rc"]) for s in job["starts"]] == [(0, 75), (1, 0)], log[-4000:]
    assert "preempted (exit 75)" in log and "requeueing job" in log
    assert log.count(f"job {job['job']} start 1:") == 1 and f"job {job['job']} start 2:" in log
    assert "resuming at epoch" in log  # the second start continued cycle 1's checkpoint
    assert outcome.read(run_dir).status == "done"
    assert_same_cycles(cycles_of(run_dir), uninterrupted)


def test_multinode_sbatch_one_torchrun_per_node(uninterrupted, synthetic_dataset, tmp_path):
    run_dir = tmp_path / "run"
    trigger = run_dir / "work" / "cycle_0001" / "ckpt" / "latest"
    job = sbatch(tmp_path, "multinode.sbatch", job_config(tmp_path, synthetic_dataset), run_dir,
                 ["--nodes=2"], env={"FAKE_SLURM_SIGNAL_WHEN": str(trigger),
                                     "FAKE_SLURM_NODENAMES": "localhost,127.0.0.2",
                                     "NPROC_PER_NODE": "1"})
    log = job["log"]
    # 2 torchrun agents + 2 ranks + 2 loader workers got SLURM's USR1.
    assert job["signals"][0]["pids"] == 6, log[-3000:]
    assert [(s["restart"], s["rc"]) for s in job["starts"]] == [(0, 75), (1, 0)], log[-4000:]
    assert "head localhost:" in log
    record = outcome.read(run_dir)
    assert (record.status, record.world_size, record.launcher) == ("done", 2, "torchrun")
    assert_same_cycles(cycles_of(run_dir), uninterrupted)
