"""`tidal-dist predict` at pool scale: peak RSS at 100k and 1M samples, on 1 process and 2 ranks.

    python benchmarks/predict_memory.py                      # 100k and 1M; results in
                                                             # benchmarks/results/predict_memory_cpu.*
    python benchmarks/predict_memory.py --sizes 2000,20000   # a smoke test
    python benchmarks/predict_memory.py --sizes 10000 --ranks 1 --csv-size 0 --append --repeat
                                       # one more run, reported with the kept ones (noise)
    python benchmarks/predict_memory.py --report-only        # the report of the kept runs

The inputs are real WebDataset tar shards of synthetic 28x28 grayscale PNGs (a class prototype
plus noise), written by prepare's own writer (data/shards.py) from a source that makes the samples
as they are written, each with an original key that is not its id, under --work (default
benchmarks/out/predict_memory, gitignored; shards and run dir are reused when they exist). The
model is a real one-cycle run: small_cnn of width 8, one epoch, on a 2,000 sample pool of the same
images. Each measurement is one `python -m tidal_dist predict RUN --split SHARDS --out FILE`
subprocess (torchrun --standalone --nproc_per_node 2 for 2 ranks, gloo on the CPU), its process
tree measured: the peak resident set of its largest process (wait4's ru_maxrss, exact; with 2
ranks the larger rank, as the launcher is smaller) and, polling /proc every 0.1 s, each process's
VmHWM and the peak sum of VmRSS over the tree. The output row
count is checked against N.

Flat memory means the 1M / 100k ratio of the peak stays about 1.0. What predict still keeps per
sample is named in the results (`per_sample_bytes`): int64 arrays of ids (the ids to predict, and
at rank 0's merge their order and scatter places); the predicted fields are merged to files and
written from them in blocks, the original keys streamed from the keys file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would swamp the results

from benchmarks.common import write  # noqa: E402
from tidal_dist.data.manifest import MANIFEST_NAME  # noqa: E402
from tidal_dist.data.shards import _write_dataset  # noqa: E402  (prepare's writer, any Source)
from tidal_dist.data.sources import (Source, SourceSpec, channel_histograms,  # noqa: E402
                                     encode_png, mean_std_from_histograms)

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "out" / "predict_memory"
SHARD_SIZE = 10_000
POLL_S = 0.1
NUM_CLASSES = 10


def child_env() -> dict[str, str]:
    """The subprocesses run this checkout, on the CPU, without progress bars."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    return env


def tidal(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "tidal_dist", *args], cwd=REPO, env=child_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"tidal-dist {' '.join(args)} failed (rc {proc.returncode}):\n"
                         f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


class SyntheticStream(Source):
    """N synthetic 28x28 grayscale samples, made as prepare writes them instead of held in memory
    (the `synthetic:` source holds every image, several GB at 1M). PNG encoding is slow on a
    busy CPU, so BANK images (class prototype plus noise) are encoded once and cycled; each
    sample still has its own key (`img/<8 digits>`, not its id) and its own place in the shards."""

    BANK = 2000

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(7)
        prototypes = rng.integers(0, 256, size=(NUM_CLASSES, 28, 28), dtype=np.uint8)
        self.bank_labels = np.arange(self.BANK) % NUM_CLASSES
        noise = rng.integers(0, 256, size=(self.BANK, 28, 28), dtype=np.uint8)
        images = (prototypes[self.bank_labels] * 0.6 + noise * 0.4).astype(np.uint8)
        self.bank = [encode_png(image) for image in images]
        self.spec = SourceSpec("synthetic", f"synthetic-stream-{n}", None, (n, NUM_CLASSES, 28, 28, 1))
        self.class_names = [f"class_{c}" for c in range(NUM_CLASSES)]
        self.mode, self.image_size = "L", (28, 28)
        self.mean, self.std = mean_std_from_histograms(channel_histograms(images, 1))
        self.lengths = {"pool": n, "test": 1000}

    def split_length(self, split: str) -> int:
        return self.lengths[split]

    def keyed_samples(self, split: str):
        for i in range(self.lengths[split]):
            j = i % self.BANK
            yield f"img/{split}/{i:08d}", int(self.bank_labels[j]), self.bank[j], "png"


def prepared(work: Path, n: int) -> Path:
    """N pool samples as tidal_dist's own shards (prepare's writer, so the same tar layout, keys,
    labels, index and manifest as `tidal-dist prepare`), made once and then reused."""
    out = work / f"prepared_{n}"
    if (out / MANIFEST_NAME).is_file():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    t0 = time.perf_counter()
    _write_dataset(SyntheticStream(n), f"synthetic-stream:{n}", partial,
                   {"shard_size": SHARD_SIZE, "skip_bad": False}, None, progress=False)
    os.rename(partial, out)  # complete, or not there: prepare's own rule
    print(f"shards of {n:,}: written in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def trained_run(work: Path, batch: int) -> Path:
    """The cheapest real run dir: one cycle of small_cnn (width 8), one epoch, on 2,000 samples of
    the same generator (a model trained on one mode of images predicts only on that mode)."""
    run_dir = work / f"run_b{batch}"
    if (run_dir / "cycles").is_dir() and any((run_dir / "cycles").glob("*/model.pt")):
        return run_dir
    root = prepared(work, 2000)  # the same images
    tidal(["run", f"data.root={root}", "data.num_workers=0", "model.backbone=small_cnn",
           "model.width=8", "train.epochs=1", "train.batch_size=64", "al.initial=200",
           "al.budget=20", "al.cycles=1", "al.subset_size=400", f"al.score_batch_size={batch}",
           f"run.dir={run_dir}"])
    return run_dir


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS (KiB) of one process; empty once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()
            if line.startswith(("VmHWM:", "VmRSS:"))}


def descendants(pid: int) -> list[int]:
    """pid and every process below it (through /proc/PID/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


# A small process between this one and the measured command: a child's ru_maxrss starts from the
# resident set of the process it was forked from (this one, with torch loaded, would set a floor of
# several hundred MiB), so the command is started, waited for and reported by this instead.
WAIT4 = ("import os, subprocess, sys\n"
         "child = subprocess.Popen(sys.argv[1:])\n"
         "_, status, usage = os.wait4(child.pid, 0)\n"
         "print('ru_maxrss_kib', usage.ru_maxrss, flush=True)\n"
         "sys.exit(os.waitstatus_to_exitcode(status))\n")


def measured(cmd: list[str]) -> dict:
    """Run `cmd`: the peak resident set of the largest process in its tree (exact: wait4's
    ru_maxrss, which covers the reaped descendants too), each process's VmHWM and the tree's
    summed VmRSS as polled every POLL_S, and the seconds."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", WAIT4, *cmd], cwd=REPO, env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hwm: dict[int, int] = {}
    names: dict[int, str] = {}
    tree_peak = 0
    while proc.poll() is None:
        total = 0
        for pid in descendants(proc.pid)[1:]:  # not the small waiting process
            status = proc_status(pid)
            if status:
                hwm[pid] = max(hwm.get(pid, 0), status["VmHWM"])
                total += status["VmRSS"]
                if pid not in names:
                    try:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                        names[pid] = f"{pid} " + cmdline.replace(b"\0", b" ").decode()[:100]
                    except OSError:
                        names[pid] = f"{pid} ?"
        tree_peak = max(tree_peak, total)
        time.sleep(POLL_S)
    output = proc.stdout.read()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{output[-4000:]}")
    peak = int(next(line.split()[1] for line in output.splitlines()
                    if line.startswith("ru_maxrss_kib ")))
    return {"seconds": seconds, "peak_rss_kib": peak,
            "polled_vmhwm_kib_per_process": {names[p]: hwm[p] for p in hwm},
            "peak_tree_rss_kib": tree_peak, "output_tail": output[-600:]}


def rows_in(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        return sum(1 for _ in f) - 1  # the header line


def predict(run_dir: Path, data: Path, n: int, ranks: int, fmt: str, work: Path) -> dict:
    out = work / "predictions" / f"p_{n}_{ranks}rank.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    args = ["predict", str(run_dir), "--split", str(data), "--out", str(out)]
    if ranks == 1:
        cmd = [sys.executable, "-m", "tidal_dist", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ranks}", "-m", "tidal_dist", *args]
    result = measured(cmd)
    rows = rows_in(out)
    if rows != n:
        raise SystemExit(f"{out}: {rows} rows, expected {n}")
    size = out.stat().st_size
    out.unlink()
    print(f"n={n:,} ranks={ranks} {fmt}: peak {result['peak_rss_kib'] / 1024:.0f} MiB, "
          f"{result['seconds']:.0f} s", flush=True)
    return {"n": n, "ranks": ranks, "format": fmt, "rows": rows, "output_bytes": size,
            "samples_per_s": n / result["seconds"], **result}


def main(argv: list[str] | None = None, out: Path | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated pool sizes")
    ap.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    ap.add_argument("--csv-size", type=int, default=None,
                    help="also write CSV at this size, 1 process (default: the largest; 0: none)")
    ap.add_argument("--batch", type=int, default=1024, help="al.score_batch_size of the run")
    ap.add_argument("--work", default=str(WORK), help="folder for shards, run dir and outputs")
    ap.add_argument("--prepare-only", action="store_true",
                    help="only make (or find) the shards and the run dir")
    ap.add_argument("--append", action="store_true",
                    help="report these runs together with the ones kept in WORK/runs.json")
    ap.add_argument("--repeat", action="store_true",
                    help="with --append: keep the earlier runs of the same size too (noise)")
    ap.add_argument("--report-only", action="store_true",
                    help="measure nothing: the report of the runs kept in WORK/runs.json")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        return report(json.loads((work / "runs.json").read_text()), args.batch, out)
    sizes = [int(s) for s in args.sizes.split(",")]
    ranks = [int(r) for r in args.ranks.split(",")]
    csv_size = max(sizes) if args.csv_size is None else args.csv_size
    run_dir = trained_run(work, args.batch)
    data = {n: prepared(work, n) for n in sizes + ([csv_size] if csv_size else [])}
    if args.prepare_only:
        return {}
    runs = []
    for r in ranks:
        for n in sizes:
            runs.append(predict(run_dir, data[n], n, r, "parquet", work))
    if csv_size:
        runs.append(predict(run_dir, data[csv_size], csv_size, 1, "csv", work))
    kept = work / "runs.json"
    if args.append and kept.is_file():
        new = set() if args.repeat else {(x["n"], x["ranks"], x["format"]) for x in runs}
        runs = [x for x in json.loads(kept.read_text())
                if (x["n"], x["ranks"], x["format"]) not in new] + runs
    runs.sort(key=lambda x: (x["format"] != "parquet", x["ranks"], x["n"]))
    kept.write_text(json.dumps(runs, indent=1))  # kept should the report fail, and for --append
    return report(runs, args.batch, out)


def rank_name(r: int) -> str:
    return f"{r} rank{'s' if r > 1 else ''}"


def report(runs: list[dict], batch: int, out: Path | None) -> dict:
    """The table, and per rank count: the largest / smallest size's peak, the growth between them
    next to what the int64 id arrays account for, and a least-squares trend over every size."""
    # What predict still holds per sample (cycle/predict.py, cycle/parts.py), all int64 arrays of
    # ids: on every rank the ids to predict; on rank 0 at the merge, at most four more at once.
    per_sample = {"ids to predict (every rank)": 8,
                  "rank 0's merge: merged ids, their order, scatter places, one temporary": 32}
    rows = [[f"{x['n']:,}", x["ranks"], x["format"], f"{x['peak_rss_kib'] / 1024:,.0f}",
             f"{x['peak_tree_rss_kib'] / 1024:,.0f}", f"{x['seconds']:,.0f}",
             f"{x['samples_per_s']:,.0f}"] for x in runs]
    summary = {}
    for r in sorted({x["ranks"] for x in runs}):
        xs = [x for x in runs if x["ranks"] == r and x["format"] == "parquet"]
        sizes = sorted({x["n"] for x in xs})
        if len(sizes) < 2:
            continue
        # repeated runs of one size: their mean (the table shows each)
        mean = {n: float(np.mean([x["peak_rss_kib"] / 1024 for x in xs if x["n"] == n]))
                for n in sizes}
        fit = np.polyfit([x["n"] for x in xs], [x["peak_rss_kib"] / 1024 for x in xs], 1)
        # run-to-run noise: the widest spread of one size's repeated runs
        repeated = [[x["peak_rss_kib"] for x in xs if x["n"] == n] for n in sizes]
        repeated = [peaks for peaks in repeated if len(peaks) > 1]
        spread = max(max(p) - min(p) for p in repeated) / 1024 if repeated else None
        small, large = sizes[0], sizes[-1]
        s = {"repeat_spread_mib": spread, "small": small, "large": large, "ratio": mean[large] / mean[small],
             "growth_mib": mean[large] - mean[small],
             "id_arrays_mib": sum(per_sample.values()) * (large - small) / 2**20,
             "trend_mib_per_100k": fit[0] * 100_000, "trend_mib_at_1m": fit[0] * 1e6 + fit[1]}
        summary[rank_name(r)] = s
        rows.append([f"{large:,} / {small:,}", r, "parquet", f"ratio {s['ratio']:.3f}",
                     f"{s['growth_mib']:+,.0f} MiB (id arrays: +{s['id_arrays_mib']:,.0f})",
                     f"trend {s['trend_mib_per_100k']:+.1f} MiB per 100k",
                     "no repeated runs" if spread is None
                     else f"repeats of one size differ by up to {spread:,.0f} MiB"])
    result = {"batch": batch, "model": "small_cnn width 8",
              "runs": [{k: v for k, v in x.items() if k != "output_tail"} for x in runs],
              "summary": summary, "per_sample_bytes": per_sample}
    write("predict_memory_cpu", result, ["N", "ranks", "format", "peak RSS, largest process (MiB)",
                                         "peak tree RSS (MiB)", "seconds", "samples/s"],
          rows, out=out)
    return result


if __name__ == "__main__":
    main()
