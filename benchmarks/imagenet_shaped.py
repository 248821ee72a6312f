"""An ImageNet-shaped active-learning cycle on this machine: 1,000 classes, a pool of 110,000
small JPEGs, ResNet-50 (ImageNet variant) at reduced resolution, 2 processes, full-pool scoring.

    python benchmarks/imagenet_shaped.py --work /work/scratch/in1k      # every step, resumable

Steps (each one skipped or continued when already done, so the same command resumes):
  1. generate  benchmarks/make_image_folder.py: WORK/folder/{train,val}/<class>/*.JPEG
  2. prepare   `python -m tidal_dist prepare --source imagefolder:WORK/folder --out WORK/shards`
  3. run       `torchrun --nproc_per_node 2 benchmarks/imagenet_shaped.py --worker ...`: the real
               `tidal-dist run` (one cycle, al.subset_size=all) inside a harness that records,
               per rank, peak RSS and the time of every TD exchange and TD commit
  4. report    benchmarks/results/imagenet_shaped.json + .md: seconds per phase (metrics.json),
               per-sample costs, peak RSS per rank, TD buffer size, gather cost
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = {
    "data.train_transform": "random_resized_crop", "data.eval_transform": "resize_center_crop",
    "data.image_size": 32, "data.num_workers": 1, "data.verify_shards": False,
    "model.backbone": "resnet50", "train.epochs": 2, "train.batch_size": 128,
    "train.checkpoint_every": 1, "train.eval_batch_size": 256, "al.initial": 10_000,
    "al.budget": 10_000, "al.cycles": 1, "al.subset_size": "all", "al.score_batch_size": 256,
    "run.seed": 0, "run.log_every": 1,
}


def worker(stats_dir: Path, overrides: list[str]) -> int:
    """One rank: `tidal-dist run` with timers around the TD exchange / commit."""
    from benchmarks.scoring import peak_rss_kib
    from tidal_dist import dynamics
    from tidal_dist.cli import main

    rank = int(os.environ.get("RANK", "0"))
    timings: dict[str, list[float]] = {"advance_s": [], "save_s": []}

    def timed(name, fn):
        def wrapper(self, *args, **kwargs):
            t0 = time.perf_counter()
            out = fn(self, *args, **kwargs)
            timings[name].append(time.perf_counter() - t0)
            return out
        return wrapper

    dynamics.DeviceTD.advance = timed("advance_s", dynamics.DeviceTD.advance)
    dynamics.DeviceTD.save = timed("save_s", dynamics.DeviceTD.save)
    t0 = time.time()
    rc = main(["run", *overrides])
    stats = {"rank": rank, "rc": rc, "seconds": time.time() - t0,
             "peak_rss_mib": peak_rss_kib() / 1024,
             "peak_rss_loader_workers_mib":
                 resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, **timings}
    stats_dir.mkdir(parents=True, exist_ok=True)
    # One file per invocation: a resumed run adds its own.
    (stats_dir / f"rank{rank}.{int(t0)}.json").write_text(json.dumps(stats))
    return rc


def report(work: Path, out: Path | None) -> dict:
    import numpy as np

    from benchmarks.common import write
    from tidal_dist.data.manifest import load_manifest

    run_dir = work / "run"
    cycle = run_dir / "cycles" / "cycle_0000"
    metrics = json.loads((cycle / "metrics.json").read_text())
    manifest = load_manifest(work / "shards")
    stats = [json.loads(p.read_text()) for p in sorted((work / "stats").glob("rank*.json"))]
    td_bytes = {p.name: p.stat().st_size for p in (cycle / "td").glob("*.npy")}
    labeled, candidates = metrics["labeled"], metrics["candidates"]
    test = metrics["test_samples"]
    epochs = len(metrics["train"])
    sec = metrics["seconds"]
    advance = [t for s in stats for t in s["advance_s"]]
    save = [t for s in stats for t in s["save_s"]]
    epoch_s = [e["seconds"] for e in metrics["train"]]
    per_sample = {
        "train_visit_s": sec["train"] / (labeled * epochs),
        "train_visit_s_epochs_only": sum(epoch_s) / (labeled * epochs),
        "eval_s": sec["evaluate"] / test,
        "score_s": sec["score"] / candidates,
    }
    result = {
        "settings": SETTINGS, "classes": manifest.num_classes,
        "pool": manifest.split("pool").num_samples, "test": test, "labeled": labeled,
        "candidates": candidates, "epochs": epochs, "world_size": metrics["world_size"],
        "accuracy": metrics["accuracy"], "seconds": sec, "epoch_seconds": epoch_s,
        "per_sample_s": per_sample, "td_files_bytes": td_bytes,
        "td_exchange_s": advance, "td_commit_s": save,
        "ranks": [{k: s[k] for k in ("rank", "rc", "seconds", "peak_rss_mib",
                                     "peak_rss_loader_workers_mib")} for s in stats],
        "shards_bytes": sum(s.bytes for s in manifest.split("pool").shards),
    }
    rows = [["classes / pool / test", f"{manifest.num_classes:,} / {result['pool']:,} / {test:,}", ""],
            ["labeled, epochs, processes", f"{labeled:,}, {epochs}, {metrics['world_size']}", ""]]
    for phase in ("train", "evaluate", "score", "select", "commit"):
        if phase in sec:
            rows.append([f"seconds: {phase}", f"{sec[phase]:,.1f} s", ""])
    rows += [["per training visit (whole phase)", f"{per_sample['train_visit_s'] * 1000:.2f} ms", ""],
             ["per evaluated image", f"{per_sample['eval_s'] * 1000:.2f} ms", ""],
             ["per scored candidate", f"{per_sample['score_s'] * 1000:.2f} ms", f"{candidates:,} candidates"],
             ["TD buffers (td/*.npy)", f"{sum(td_bytes.values()) / 2**20:,.1f} MiB",
              ", ".join(f"{k} {v / 2**20:,.1f} MiB" for k, v in sorted(td_bytes.items()))],
             ["TD exchange per epoch (all ranks' timings)",
              f"{np.median(advance) * 1000:.1f} ms median" if advance else "-",
              f"{len(advance)} exchanges"],
             ["TD commit to rank 0 (checkpoints, cycle end)",
              f"{np.median(save) * 1000:.1f} ms median" if save else "-", f"{len(save)} commits"]]
    for s in stats:
        rows.append([f"peak RSS rank {s['rank']} (run of {s['seconds']:.0f} s)",
                     f"{s['peak_rss_mib']:,.0f} MiB",
                     f"loader workers {s['peak_rss_loader_workers_mib']:,.0f} MiB"])
    rows.append(["test accuracy after the cycle", f"{metrics['accuracy']:.4f}",
                 f"{manifest.num_classes:,} classes"])
    write("imagenet_shaped", result, ["measure", "value", "note"], rows, out=out)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/work/scratch/in1k")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--train-per-class", type=int, default=110)
    ap.add_argument("--val-per-class", type=int, default=10)
    ap.add_argument("--size", default="48x40")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--stats", default=None)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change one of the run settings (e.g. al.initial=100 for a smoke test)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    if args.worker:
        sys.exit(worker(Path(args.stats), args.overrides))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        from benchmarks.make_image_folder import generate

        t0 = time.time()
        generate(work / "folder", args.classes, {"train": args.train_per_class,
                                                  "val": args.val_per_class},
                 tuple(map(int, args.size.split("x"))))
        print(f"generate: {time.time() - t0:.0f} s", flush=True)
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "tidal_dist", "prepare", "--source",
                        f"imagefolder:{work / 'folder'}", "--out", str(work / "shards")],
                       cwd=REPO, check=True)
        print(f"prepare: {time.time() - t0:.0f} s", flush=True)
        settings = {**SETTINGS, **dict(kv.split("=", 1) for kv in args.set),
                    "data.root": work / "shards", "run.dir": work / "run"}
        overrides = [f"{k}={v}" for k, v in settings.items()]
        env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               __file__, "--worker", "--stats", str(work / "stats"), "--", *overrides]
        t0 = time.time()
        subprocess.run(cmd, cwd=REPO, env=env, check=True)
        print(f"run: {time.time() - t0:.0f} s", flush=True)
    report(work, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
