"""Pool scoring: throughput against a bare model(x) loop, peak RSS vs pool size, top-k speed.

    python benchmarks/scoring.py            # all three; results in benchmarks/results/scoring.*

1. throughput: score_pool (streaming reader, strategy, part files, merge) / a bare loop over the
   same StreamingDataset loader and batch that only calls model(x). Target >= 0.9.
2. peak RSS of one scoring process (num_workers=0, so all work is in it) for 10k and 1M
   synthetic candidates. Target ratio <= 1.2.
3. top_k over 10M random scores, k = 10,000. Target < 2 s on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would swamp the results

from benchmarks.common import write  # noqa: E402
from tidal_dist.config import load_config  # noqa: E402
from tidal_dist.cycle.score import score_pool  # noqa: E402
from tidal_dist.data.manifest import load_manifest  # noqa: E402
from tidal_dist.data.readers import StreamingDataset, stream_loader  # noqa: E402
from tidal_dist.data.shards import prepare  # noqa: E402
from tidal_dist.data.transforms import build_transform  # noqa: E402
from tidal_dist.selection import top_k  # noqa: E402
from tidal_dist.strategies import ScoreContext, get_strategy  # noqa: E402
from tidal_dist.training.session import build_session  # noqa: E402


REPEATS = 4


def dataset(work: Path, n: int, size: str) -> Path:
    root = work / f"synthetic_{n}_{size}"
    prepare(f"synthetic:{n},10,{size},1", root, shard_size=min(50_000, max(n // 8, 1000)),
            progress=False)
    return root


def session_for(root: Path, workers: int, run_dir: Path):
    cfg = load_config(None, [f"data.root={root}", f"data.num_workers={workers}",
                             "model.backbone=small_cnn", "al.score_batch_size=256",
                             f"run.dir={run_dir}", "data.verify_shards=false",
                             # the streamed path, whose overhead and memory this measures (the
                             # pool kept decoded is eval_passes.py's)
                             "train.data_path=loader"])
    return build_session(cfg)


def throughput(work: Path, n: int, workers: int) -> dict:
    root = dataset(work, n, "28x28")
    session = session_for(root, workers, work / "run")
    ids = load_manifest(root).split("pool").ids()
    model = session.model.eval()
    transform = build_transform("none", load_manifest(root), train=False)

    def bare() -> float:
        ds = StreamingDataset(root, "pool", transform, ids=ids, rank=0, world_size=1, verify=False)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for _, x, _ in stream_loader(ds, 256, workers):
                model(x)
        return time.perf_counter() - t0

    def scored() -> float:
        t0 = time.perf_counter()
        score_pool(session, ids, get_strategy("tidal_entropy"), work / "parts", ScoreContext(0))
        return time.perf_counter() - t0

    bare(), scored()  # warm the page cache and the allocator
    # Alternated, best of several: a 6 s pass on a shared 2-core machine varies by ~10% run to run,
    # as much as the difference being measured.
    b, s = [], []
    for _ in range(REPEATS):
        b.append(bare())
        s.append(scored())
    return {"n": n, "workers": workers, "bare_img_s": n / min(b), "score_img_s": n / min(s),
            "ratio": min(b) / min(s)}


def peak_rss_kib() -> int:
    """This process's peak resident set. VmHWM belongs to the current address space; getrusage's
    ru_maxrss survives exec, so a child forked from a large parent would report the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_child(root: str) -> None:
    """Runs in a subprocess: score every pool id once, print peak RSS (KiB) as JSON."""
    work = Path(tempfile.mkdtemp())
    session = session_for(Path(root), 0, work / "run")
    ids = load_manifest(root).split("pool").ids()
    t0 = time.perf_counter()
    score_pool(session, ids, get_strategy("tidal_entropy"), work / "parts", ScoreContext(0))
    print(json.dumps({"n": len(ids), "peak_rss_kib": peak_rss_kib(),
                      "seconds": time.perf_counter() - t0}))


def peak_rss(work: Path, n: int) -> dict:
    root = dataset(work, n, "8x8")
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(root)], capture_output=True,
                         text=True, check=True, env={"OMP_NUM_THREADS": "2", "PATH": ""})
    return json.loads(out.stdout.strip().splitlines()[-1])


def topk_time(n: int, k: int) -> dict:
    rng = np.random.default_rng(0)
    ids, scores = np.arange(n, dtype=np.int64), rng.random(n)
    t0 = time.perf_counter()
    top_k(ids, scores, k)
    return {"n": n, "k": k, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None, out: Path | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rss-child")
    ap.add_argument("--throughput-n", type=int, default=20_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=1_000_000)
    ap.add_argument("--topk-n", type=int, default=10_000_000)
    ap.add_argument("--work", default=None, help="folder for the synthetic shards (default: temp)")
    args = ap.parse_args(argv)
    if args.rss_child:
        return rss_child(args.rss_child)
    work = Path(args.work or tempfile.mkdtemp(prefix="tidal_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    tp = [throughput(work, args.throughput_n, w) for w in (0, 2)]
    small, large = peak_rss(work, args.small), peak_rss(work, args.large)
    tk = topk_time(args.topk_n, min(10_000, args.topk_n))
    rss_ratio = large["peak_rss_kib"] / small["peak_rss_kib"]
    rows = [[f"throughput, {t['workers']} workers", f"{t['bare_img_s']:.0f} img/s bare",
             f"{t['score_img_s']:.0f} img/s scored", f"{t['ratio']:.3f}", ">= 0.9"] for t in tp]
    rows.append(["peak RSS", f"{small['peak_rss_kib'] / 1024:.0f} MiB @ {small['n']:,}",
                 f"{large['peak_rss_kib'] / 1024:.0f} MiB @ {large['n']:,}", f"{rss_ratio:.3f}",
                 "<= 1.2"])
    rows.append(["top-k", f"k={tk['k']:,} of {tk['n']:,}", f"{tk['seconds']:.2f} s", "", "< 2 s"])
    result = {"throughput": tp, "rss": {"small": small, "large": large, "ratio": rss_ratio},
              "topk": tk}
    write("scoring", result, ["measure", "baseline", "measured", "ratio", "target"], rows, out=out)
    return result


if __name__ == "__main__":
    main()
