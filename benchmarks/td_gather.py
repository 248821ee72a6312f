"""Per-epoch TD gather with real processes (gloo): device rows + all_to_all vs the file fold.

    python benchmarks/td_gather.py [--sizes 100000x1000,20000x8142] [--world 2] [--epochs 3]

For each N x C, one torchrun job of `--world` processes runs `--epochs` epochs of both schemes on
the same epoch assignment, interleaved epoch by epoch:

  file fold (the earlier scheme): each rank appends its visits (id, softmax row) to its memmap in
      the run dir (VisitRecorder, below); at the epoch end: flush, barrier, rank 0 folds every
      rank's file into the memory-mapped buffers (fold_visit_files, np.add.at), barrier. This is
      how tidal_dist gathered TD before dynamics/state.py; it lives here now, as the baseline.
  device rows (dynamics.DeviceTD): each rank adds its visits to its own rows; at the epoch end
      one all_to_all_single moves every row to the rank that visits it next epoch.

Timed per epoch: `boundary_s`, what the epoch end costs (what every rank waits for), and
`record_s`, the per-step record + target calls summed over the epoch. Also reported: bytes each
scheme writes into the run dir per epoch. The probabilities are random softmax rows, made before
the timing. Target (issue): device rows >= 10x faster at the epoch boundary, no run-dir writes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

BATCH = 128  # per rank, as in the protocols


# --- the earlier file-based gather, the baseline --------------------------------------------------

def file_targets(buffer, ids: np.ndarray, probs: torch.Tensor) -> torch.Tensor:
    """(sum + p) / (count + 1) read from the memory-mapped buffers by id."""
    rows = buffer.rows(ids)
    prev_sum = torch.from_numpy(np.asarray(buffer.sum[rows])).to(probs.dtype)
    prev_count = torch.from_numpy(np.asarray(buffer.count[rows], dtype=np.float32)).unsqueeze(1)
    return (prev_sum + probs) / (prev_count + 1.0)


class VisitRecorder:
    """One rank's visits between two folds: ids and softmax rows, preallocated memmaps."""

    def __init__(self, folder: Path, rank: int, capacity: int, num_classes: int):
        from tidal_dist.job.fsutil import new_memmap

        folder.mkdir(parents=True, exist_ok=True)
        self.ids = new_memmap(folder / f"visit_ids.rank{rank}.npy", np.int64, (capacity,))
        self.probs = new_memmap(folder / f"visits.rank{rank}.npy", np.float32, (capacity, num_classes))
        self.n = 0
        self.ids[:] = -1

    def record(self, ids: np.ndarray, probs: np.ndarray) -> None:
        k = len(ids)
        self.ids[self.n:self.n + k] = ids
        self.probs[self.n:self.n + k] = probs
        self.n += k

    def flush(self) -> None:
        self.ids.flush()
        self.probs.flush()

    def reset(self) -> None:
        self.ids[: self.n] = -1
        self.n = 0


def fold_visit_files(buffer, folder: Path, world_size: int) -> None:
    """Rank 0, after a barrier: add every rank's recorded visits into the buffers (np.add.at)."""
    for r in range(world_size):
        ids = np.load(folder / f"visit_ids.rank{r}.npy", mmap_mode="r")
        n = int(np.count_nonzero(ids >= 0))  # recorded rows are a prefix; -1 marks unused rows
        if n:
            probs = np.load(folder / f"visits.rank{r}.npy", mmap_mode="r")
            rows = buffer.rows(np.asarray(ids[:n]))
            np.add.at(buffer.sum, rows, np.asarray(probs[:n]))
            np.add.at(buffer.count, rows, 1)
    buffer.flush()


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def worker(n: int, c: int, epochs: int, run_dir: Path, out: Path) -> None:
    import torch.distributed as dist

    from tidal_dist.data.readers import epoch_assignment
    from tidal_dist.dynamics.buffer import TDBuffer
    from tidal_dist.dynamics.state import DeviceTD, EpochLayout

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ids = np.arange(n, dtype=np.int64)
    labels = torch.from_numpy(ids % c)
    rng = np.random.default_rng(rank)
    per_rank = EpochLayout(n, 0, 0, world, BATCH).per_rank
    probs = torch.from_numpy(rng.random((per_rank, c), dtype=np.float32))
    probs /= probs.sum(1, keepdim=True)

    td_dir = run_dir / "td"
    if rank == 0:
        TDBuffer.create(td_dir, ids, c)
    dist.barrier()
    writer = TDBuffer(td_dir, writable=True) if rank == 0 else None
    recorder = VisitRecorder(td_dir, rank, per_rank, c)
    device_td = DeviceTD(ids, c, EpochLayout(n, 0, 0, world, BATCH), rank, torch.device("cpu"))
    rows = {"file": [], "device": []}
    for epoch in range(epochs):
        rank_ids, valid = epoch_assignment(ids, epoch, 0, rank, world, batch_size=BATCH)
        v = torch.from_numpy(valid)
        y = labels[rank_ids]

        # --- the file fold -----------------------------------------------------------------
        dist.barrier()
        buffer = TDBuffer(td_dir)
        t0 = time.perf_counter()
        for lo in range(0, per_rank, BATCH):
            p = probs[lo:lo + BATCH]
            file_targets(buffer, rank_ids[lo:lo + BATCH], p)
            keep = valid[lo:lo + BATCH]
            recorder.record(rank_ids[lo:lo + BATCH][keep], p.numpy()[keep])
        t1 = time.perf_counter()
        recorder.flush()
        dist.barrier()
        if writer is not None:
            fold_visit_files(writer, td_dir, world)
        dist.barrier()
        recorder.reset()
        t2 = time.perf_counter()
        visit_bytes = sum((td_dir / f"{kind}.rank{r}.npy").stat().st_size
                          for r in range(world) for kind in ("visits", "visit_ids"))
        rows["file"].append({"record_s": t1 - t0, "boundary_s": t2 - t1,
                             "run_dir_bytes_written": visit_bytes})

        # --- device rows + all_to_all --------------------------------------------------------
        dist.barrier()
        before = dir_bytes(run_dir) if rank == 0 else 0
        t0 = time.perf_counter()
        for lo in range(0, per_rank, BATCH):
            p = probs[lo:lo + BATCH]
            device_td.targets(lo, p)
            device_td.record(lo, p, y[lo:lo + BATCH], v[lo:lo + BATCH])
        t1 = time.perf_counter()
        device_td.advance()
        dist.barrier()
        t2 = time.perf_counter()
        after = dir_bytes(run_dir) if rank == 0 else 0
        rows["device"].append({"record_s": t1 - t0, "boundary_s": t2 - t1,
                               "run_dir_bytes_written": after - before})

    # Both schemes recorded the same visits: check the results agree before reporting times.
    snap = run_dir.parent / "device_snapshot"
    device_td.save(snap)
    if rank == 0:
        a, b = TDBuffer(td_dir), TDBuffer(snap)
        assert np.array_equal(a.count, b.count) and (np.asarray(a.count) == epochs).all()
        assert np.allclose(a.sum, b.sum, rtol=1e-4, atol=1e-5)
        out.write_text(json.dumps({"n": n, "c": c, "world": world, "epochs": epochs, **rows}))
    dist.barrier()
    dist.destroy_process_group()


def run(n: int, c: int, world: int, epochs: int, work: Path) -> dict:
    """Start the torchrun job and summarise: medians over the epochs after the first."""
    case = Path(tempfile.mkdtemp(prefix=f"td_gather_{n}x{c}_", dir=work))
    out = case / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={world}", __file__, "--worker", f"{n}x{c}", "--epochs", str(epochs),
           "--run-dir", str(case / "run"), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"td_gather worker failed:\n{proc.stderr[-4000:]}")
    raw = json.loads(out.read_text())
    import shutil

    shutil.rmtree(case, ignore_errors=True)
    timed = slice(1, None) if epochs > 1 else slice(None)

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in raw[kind][timed])

    summary = {"n": n, "c": c, "world": world, "epochs": epochs,
               "sum_bytes": n * c * 4, "per_rank_rows_bytes": -(-n // world) * (c * 4 + 32)}
    for kind in ("file", "device"):
        summary[kind] = {"boundary_s": med(kind, "boundary_s"), "record_s": med(kind, "record_s"),
                         "run_dir_bytes_written": int(med(kind, "run_dir_bytes_written"))}
    summary["boundary_speedup"] = summary["file"]["boundary_s"] / summary["device"]["boundary_s"]
    summary["total_speedup"] = ((summary["file"]["boundary_s"] + summary["file"]["record_s"]) /
                                (summary["device"]["boundary_s"] + summary["device"]["record_s"]))
    return summary


def rows_for(results: list[dict]) -> list[list]:
    rows = []
    for r in results:
        f, d = r["file"], r["device"]
        rows.append([f"{r['n']:,} x {r['c']:,}", r["world"],
                     f"{f['boundary_s']:.3f} s", f"{d['boundary_s']:.3f} s",
                     f"{r['boundary_speedup']:.1f}x",
                     f"{f['record_s']:.3f} s", f"{d['record_s']:.3f} s",
                     f"{f['run_dir_bytes_written'] / 2**20:,.0f} MiB",
                     f"{d['run_dir_bytes_written'] / 2**20:,.0f} MiB"])
    return rows


HEADER = ["N x C", "processes", "file fold: epoch end", "device rows: epoch end", "speed-up",
          "file: record+targets/epoch", "device: record+targets/epoch", "file: run-dir writes/epoch",
          "device: run-dir writes/epoch"]


def main(argv: list[str] | None = None, out: Path | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000x1000,20000x8142")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--name", default="td_gather")
    ap.add_argument("--worker")
    ap.add_argument("--run-dir")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.worker:
        n, c = map(int, args.worker.split("x"))
        worker(n, c, args.epochs, Path(args.run_dir), Path(args.out))
        return {}
    from benchmarks.common import write

    work = Path(args.work or tempfile.gettempdir())
    work.mkdir(parents=True, exist_ok=True)
    results = [run(*map(int, s.split("x")), args.world, args.epochs, work)
               for s in args.sizes.split(",")]
    result = {"target_speedup_min": 10, "results": results}
    write(args.name, result, HEADER, rows_for(results), out=out)
    return result


if __name__ == "__main__":
    main()
