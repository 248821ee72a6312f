"""Every failure of an output location or a dataset ends with one clear line naming the path or
key and exit 2, no traceback, nothing committed lost: full, read-only and impossible run dirs and
`prepare --out` folders (a real tmpfs, mounted by the test), a disk that fills during a run, and
`inspect` noticing missing or wrong-sized shards without --verify."""

import hashlib
import re
import subprocess
import sys

from tests.mp import REPO, cpu_env, run_module, tail
from tests.procs import wait_for
from tests.tmpfs import fill, tiny_tmpfs  # noqa: F401 - a fixture
from tidal_dist.job import outcome


def no_traceback_of_ours(text):
    return not re.search(r'File ".*/tidal_dist/', text) and "Traceback" not in text


def run_args(root, run_dir, *extra):
    return ["run", f"data.root={root}", "data.num_workers=0", "model.backbone=small_cnn",
            "model.width=4", "train.epochs=2", "train.batch_size=16", "train.checkpoint_every=1",
            "al.initial=20", "al.budget=10", "al.cycles=2", "al.subset_size=40",
            f"run.dir={run_dir}", *extra]


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def test_a_read_only_or_impossible_run_dir(synthetic_dataset, tiny_tmpfs, tmp_path):
    frozen = tiny_tmpfs("1m", read_only=True)
    proc = run_module(run_args(synthetic_dataset, frozen / "run"))
    assert proc.returncode == 2, tail(proc)
    assert f"config key 'run.dir': '{frozen}' is on a read-only filesystem" in proc.stderr
    assert no_traceback_of_ours(proc.stderr)
    (tmp_path / "a_file").write_text("x")
    proc = run_module(run_args(synthetic_dataset, tmp_path / "a_file" / "run"))
    assert proc.returncode == 2 and f"'{tmp_path / 'a_file'}' is a file" in proc.stderr


def test_a_disk_that_fills_during_the_run(synthetic_dataset, tiny_tmpfs):
    disk = tiny_tmpfs("4m")
    run_dir = disk / "run"
    cmd = [sys.executable, "-m", "tidal_dist", *run_args(synthetic_dataset, run_dir,
                                                        "train.epochs=6")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(run_dir / "cycles" / "cycle_0000" / "metrics.json", timeout=240)
    committed = digest(run_dir / "cycles" / "cycle_0000")
    filler = fill(disk)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, f"{out[-2000:]}\n{err[-4000:]}"
    assert "No space left on device" in err or "is full" in err, err[-3000:]
    assert str(run_dir) in err and no_traceback_of_ours(err), err[-3000:]
    assert "committed results are intact" in err
    assert digest(run_dir / "cycles" / "cycle_0000") == committed
    filler.unlink()
    again = run_module(run_args(synthetic_dataset, run_dir, "train.epochs=6"))
    assert again.returncode == 0, tail(again)
    assert outcome.read(run_dir).status == "done"
    assert digest(run_dir / "cycles" / "cycle_0000") == committed


def prepare(out, spec="synthetic:400,5,32x32,3", shard_size=50):
    return run_module(["prepare", "--source", spec, "--out", str(out), "--shard-size",
                       str(shard_size)])


def test_prepare_out_full_read_only_or_impossible(tiny_tmpfs, tmp_path):
    small = tiny_tmpfs("256k")
    proc = prepare(small / "shards")
    assert proc.returncode == 2, tail(proc)
    assert f"--out '{small / 'shards'}': cannot write" in proc.stderr
    assert "No space left on device" in proc.stderr and no_traceback_of_ours(proc.stderr)
    assert list(small.iterdir()) == []  # the partial output was removed
    # a disk that fills inside a shard: the tar stream is abandoned, not flushed again at exit
    mid = tiny_tmpfs("1m")
    proc = prepare(mid / "shards", "synthetic:2000,5,32x32,3", shard_size=700)
    assert proc.returncode == 2, tail(proc)
    assert "No space left on device" in proc.stderr and no_traceback_of_ours(proc.stderr)
    assert "Exception ignored" not in proc.stderr and list(mid.iterdir()) == []
    frozen = tiny_tmpfs("1m", read_only=True)
    proc = prepare(frozen / "shards")
    assert proc.returncode == 2 and "is on a read-only filesystem" in proc.stderr
    (tmp_path / "a_file").write_text("x")
    proc = prepare(tmp_path / "a_file" / "shards")
    assert proc.returncode == 2 and f"--out: '{tmp_path / 'a_file'}' is a file" in proc.stderr
    proc = prepare(tmp_path / "a_file")
    assert proc.returncode == 2 and "exists and is not a folder" in proc.stderr


def test_inspect_notices_missing_and_wrong_sized_shards(synthetic_dataset, copy_dataset):
    clean = run_module(["inspect", str(synthetic_dataset)])
    assert clean.returncode == 0 and "all 8 present with their manifest sizes" in clean.stdout
    root = copy_dataset(synthetic_dataset)
    (root / "pool-000001.tar").unlink()
    with open(root / "test-000000.tar", "ab") as f:
        f.write(b"x" * 10)
    proc = run_module(["inspect", str(root)])
    assert proc.returncode == 2, tail(proc)
    assert f"shard '{root / 'pool-000001.tar'}' is missing" in proc.stderr
    assert f"shard '{root / 'test-000000.tar'}' has" in proc.stderr and "the manifest says" in proc.stderr
    verify = run_module(["inspect", str(root), "--verify"])
    assert verify.returncode == 2 and "missing" in verify.stderr
