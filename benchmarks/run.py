"""Every benchmark on the machine it runs on, and one summary of the figures against their targets.

    python benchmarks/run.py                 # full sizes (about 25 minutes on 2 CPU cores)
    python benchmarks/run.py --quick         # tiny sizes, a smoke test (tests/benchmarks/test_benchmarks.py)
    python benchmarks/run.py --out DIR --only td_gather,scoring

Writes DIR/<name>.json + DIR/<name>.md for each benchmark (default DIR: benchmarks/results) and
DIR/summary.json + summary.md. Every figure is a ratio against a baseline measured in the same
run, or a time with its target; each file records the machine (CPU model, cores, GPU name).

| figure | baseline | target |
|---|---|---|
| TD overhead | plain CE step, same model and batch (train_step.py) | <= 1.05 CPU, <= 1.03 GPU |
| training path | in-memory tensor loop, same model (training_path.py) | >= 0.9 |
| TD gather | today's file fold, same run (td_gather.py); and vs an epoch of steps | >= 10x; < 5% |
| scoring | bare model(x) over the same loader (scoring.py) | >= 0.9 |
| peak RSS | scoring 10k candidates (scoring.py) | 1M / 10k <= 1.2 |
| top-k | - | 10M in < 2 s |
| strategies | TiDAL-H's query, same run (strategies.py) | per-sample <= 1.1x, BALD <= 1.1 x T; Core-set and BADGE selection at 100k candidates (50k centres, k 10k) < 3 min, < 2 GB |
| train.sync_batchnorm | torch's BatchNorm2d step, same weights (sync_batchnorm.py) | - (the trade-off in docs/launching.md) |
| TD overhead, timm | plain CE step, timm ResNet-50 and ViT-S at 224 (timm_models.py) | <= 1.05 CPU |
| frozen-feature path | image path with the same frozen backbone, one 10-epoch cycle (timm_models.py) | >= 10x |
| evaluation + scoring passes | the same passes streamed from the shards (eval_passes.py) | >= 2x after the first cycle |
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")

from benchmarks import (eval_passes, readers, scoring, strategies, sync_batchnorm,  # noqa: E402
                        td_gather, timm_models, train_step, training_path)
from benchmarks.common import RESULTS, machine, write  # noqa: E402

FULL = {
    "train_step": ["--backbones", "small_cnn,resnet18_cifar"],
    "training_path": ["--n", "4096", "--epochs", "5"],
    "td_gather": ["--sizes", "100000x1000,20000x8142", "--epochs", "6"],
    "scoring": [],
    "readers": [],
    "strategies": [],
    "sync_batchnorm": [],
    "timm_models": [],
    "eval_passes": [],
}
QUICK = {
    "train_step": ["--backbones", "small_cnn", "--steps", "3", "--batch", "16"],
    "training_path": ["--n", "192", "--epochs", "2", "--batch", "64", "--workers", "0"],
    "td_gather": ["--sizes", "1000x20", "--epochs", "2"],
    "scoring": ["--throughput-n", "600", "--small", "300", "--large", "3000",
                "--topk-n", "100000"],
    "readers": ["--source", "synthetic:600,10,8x8,1", "--random-reads", "100"],
    "strategies": ["--n", "400", "--labeled", "200", "--k", "40"],
    "sync_batchnorm": ["--backbones", "small_cnn", "--steps", "2", "--batch", "16"],
    "timm_models": ["--models", "resnet10t", "--size", "32", "--batch", "8", "--steps", "1",
                    "--n", "8", "--epochs", "2", "--image-epochs", "1"],
    "eval_passes": ["--pool", "1000", "--candidates", "300", "--cycles", "2"],
}

PER_DEVICE = {"train_step", "sync_batchnorm", "timm_models"}  # their results file is named <name>_<cpu|cuda>
NO_SCRATCH = {"train_step", "readers", "sync_batchnorm", "timm_models", "eval_passes"}  # they take no --work folder


def figures(res: dict) -> list[dict]:
    """The summary: one row per figure, with its target and whether it is met."""
    out = []

    def add(name, value, text, target, ok):
        # Values may be numpy scalars (a strategy's timings); the summary is plain JSON.
        out.append({"figure": name, "value": float(value), "text": text, "target": target,
                    "ok": None if ok is None else bool(ok)})

    if "train_step" in res:
        r = res["train_step"]
        for b in r["results"]:
            add(f"TD overhead ({b['backbone']}, {b['device']})", b["ratio"],
                f"TiDAL / CE step = {b['ratio']:.3f} ({b['tidal_step_s'] * 1000:.1f} / "
                f"{b['plain_step_s'] * 1000:.1f} ms)", f"<= {r['target_ratio_max']}",
                b["ratio"] <= r["target_ratio_max"])
            # What the product adds to the method: the TD rows, targets and record, against the
            # same TiDAL step (TD module + KL) without them.
            book = b["tidal_step_s"] / b["module_only_step_s"]
            add(f"TD bookkeeping ({b['backbone']}, {b['device']})", book,
                f"TiDAL step / the same without TD rows = {book:.3f} (the TD module alone: "
                f"{b['module_only_ratio']:.3f} x the CE step)", f"<= {r['target_ratio_max']}",
                book <= r["target_ratio_max"])
    if "training_path" in res:
        r = res["training_path"]
        for path, p in r["paths"].items():
            add(f"training path ({path}, {r['backbone']}, {r['device']})", p["ratio"],
                f"in-memory loop / path epoch = {p['ratio']:.3f} ({p['img_s']:,.0f} img/s)",
                ">= 0.9", p["ratio"] >= 0.9)
    if "td_gather" in res:
        steps = res.get("train_step", {}).get("results", [])
        step = max(steps, key=lambda b: b["tidal_step_s"]) if steps else None
        for g in res["td_gather"]["results"]:
            size = f"{g['n']:,} x {g['c']:,}, {g['world']} processes"
            add(f"TD gather vs file fold ({size})", g["boundary_speedup"],
                f"{g['file']['boundary_s']:.3f} s -> {g['device']['boundary_s']:.4f} s per epoch "
                f"({g['boundary_speedup']:.1f}x); run-dir writes per epoch "
                f"{g['file']['run_dir_bytes_written'] / 2**20:,.0f} MiB -> "
                f"{g['device']['run_dir_bytes_written'] / 2**20:,.0f} MiB",
                ">= 10x, no run-dir writes",
                g["boundary_speedup"] >= 10 and g["device"]["run_dir_bytes_written"] == 0)
            if step is not None:
                # An epoch of this N on this machine: N / global batch steps of the measured
                # TiDAL step (the heaviest backbone measured), split over the processes.
                epoch_s = g["n"] / step["batch"] * step["tidal_step_s"] / g["world"]
                share = g["device"]["boundary_s"] / epoch_s
                add(f"TD gather vs epoch ({size}, {step['backbone']} steps)", share,
                    f"{g['device']['boundary_s']:.4f} s of a {epoch_s:,.1f} s epoch = "
                    f"{100 * share:.3f}%", "< 5%", share < 0.05)
    if "scoring" in res:
        r = res["scoring"]
        for t in r["throughput"]:
            add(f"scoring vs bare model(x) ({t['workers']} workers)", t["ratio"],
                f"{t['score_img_s']:,.0f} / {t['bare_img_s']:,.0f} img/s = {t['ratio']:.3f}",
                ">= 0.9", t["ratio"] >= 0.9)
        rss = r["rss"]
        add("peak RSS scoring large vs small pool", rss["ratio"],
            f"{rss['large']['peak_rss_kib'] / 1024:,.0f} MiB @ {rss['large']['n']:,} / "
            f"{rss['small']['peak_rss_kib'] / 1024:,.0f} MiB @ {rss['small']['n']:,} = "
            f"{rss['ratio']:.3f}", "<= 1.2", rss["ratio"] <= 1.2)
        tk = r["topk"]
        add(f"top-k of {tk['n']:,}", tk["seconds"], f"{tk['seconds']:.2f} s", "< 2 s",
            tk["seconds"] < 2)
    if "strategies" in res:
        r = res["strategies"]
        size = f"{r['n']:,} candidates, {r['labeled']:,} labeled, k {r['k']:,}"
        per_sample = {n: v for n, v in r["strategies"].items()
                      if not v["set_based"] and n not in ("bald", "tidal_entropy")}
        worst = max(per_sample, key=lambda n: per_sample[n]["ratio_to_tidal_entropy"])
        ratio = per_sample[worst]["ratio_to_tidal_entropy"]
        add(f"per-sample strategies vs TiDAL-H ({size})", ratio,
            f"slowest: {worst} {ratio:.3f} x TiDAL-H's query", "<= 1.1", ratio <= 1.1)
        bald = r["strategies"]["bald"]["ratio_to_tidal_entropy"]
        add(f"BALD vs TiDAL-H (T = {r['mc_passes']})", bald, f"{bald:.3f} x TiDAL-H's query",
            f"<= {1.1 * r['mc_passes']:.1f}", bald <= 1.1 * r["mc_passes"])
        for name in ("coreset", "badge"):
            v = r["strategies"][name]
            add(f"{name} selection step ({size})", v["select_s"],
                f"{v['select_s']:.1f} s, {v['select_extra_mib']:,.0f} MiB extra", "< 180 s, < 2 GB",
                v["select_s"] < 180 and v["select_extra_mib"] < 2048)
    if "sync_batchnorm" in res:
        for b in res["sync_batchnorm"]["results"]:
            add(f"train.sync_batchnorm step ({b['backbone']}, {b['device']}, 1 process)", b["ratio"],
                f"GlobalBatchNorm2d / BatchNorm2d step = {b['ratio']:.3f}; "
                f"{b['allreduces_per_step_under_ddp']} all-reduces per step under DDP", "-", None)
    if "timm_models" in res:
        r = res["timm_models"]
        for b in r["td_overhead"]:
            add(f"TD overhead ({b['backbone']}, {b['device']})", b["ratio"],
                f"TiDAL / CE step = {b['ratio']:.3f} ({b['tidal_step_s'] * 1000:.0f} / "
                f"{b['plain_step_s'] * 1000:.0f} ms, {b['input']})",
                f"<= {r['target_td_ratio_max']}", b["ratio"] <= r["target_td_ratio_max"])
        f = r["frozen_path"]
        add(f"frozen-feature path vs image path (timm:{f['model']}, {f['epochs']} epochs)",
            f["cycle_ratio"], f"{f['cycle_ratio']:.2f}x per cycle ({f['epoch_ratio']:.0f}x per "
            f"epoch after the one pass; ceiling {f['ceiling']:.1f}x)",
            f">= {r['target_frozen_cycle_ratio_min']:.0f}x",
            f["cycle_ratio"] >= r["target_frozen_cycle_ratio_min"])
    if "eval_passes" in res:
        r = res["eval_passes"]
        ratio = r["ratio_after_first_cycle"]
        add("evaluation + scoring passes, decoded vs streamed", ratio,
            f"streamed / decoded seconds = {ratio:.1f} ({r['test']:,} test images + "
            f"{r['candidates']:,} candidates of {r['pool']:,} per cycle)", ">= 2x", ratio >= 2)
    if "readers" in res:
        r = res["readers"]
        add("random-access reads", r["random_reads_per_s"],
            f"{r['random_reads_per_s']:,.0f} reads/s ({r['source']})", "-", None)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    ap.add_argument("--out", default=None, help=f"results folder (default {RESULTS})")
    ap.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(FULL))
    ap.add_argument("--work", default=None, help="scratch folder for generated data")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS
    sizes = QUICK if args.quick else dict(FULL)
    if not args.quick and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        sizes["readers"] = ["--source", "synthetic:70000,10,28x28,1"]
    names = args.only.split(",") if args.only else list(FULL)
    unknown = set(names) - set(FULL)
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(FULL)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="tidal_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    modules = {"train_step": train_step, "training_path": training_path, "td_gather": td_gather,
               "scoring": scoring, "readers": readers, "strategies": strategies,
               "sync_batchnorm": sync_batchnorm, "timm_models": timm_models,
               "eval_passes": eval_passes}
    results, seconds = {}, {}
    # Benchmarks not run now keep their stored results in the summary (each file has its date).
    device = "cuda" if train_step.torch.cuda.is_available() else "cpu"
    for name in set(FULL) - set(names):
        path = out / f"{name}_{device}.json" if name in PER_DEVICE else out / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    for name in names:
        extra = [] if name in NO_SCRATCH else ["--work", str(work / name)]
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        results[name] = modules[name].main(sizes[name] + extra, out=out)
        seconds[name] = time.perf_counter() - t0
    rows = figures(results)
    verdict = {True: "yes", False: "NO", None: ""}
    write("summary", {"quick": args.quick, "seconds": seconds, "figures": rows},
          ["figure", "measured", "target", "met"],
          [[r["figure"], r["text"], r["target"], verdict[r["ok"]]] for r in rows], out=out)
    return {"machine": machine(), "results": results, "figures": rows}


if __name__ == "__main__":
    main()
