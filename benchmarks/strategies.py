"""Seconds per query for every strategy, as a ratio to TiDAL-H measured in the same run.

    python benchmarks/strategies.py [--n 100000] [--labeled 50000] [--k 10000] [--out DIR]
    (also part of python benchmarks/run.py)

One query = the real scoring path (score_pool over prepared synthetic shards, plus the labeled-set
pass Core-set needs) and the selection (top-k, or the set-based selection on rank 0). The network is
a small CNN of width 64, whose embedding is 512 wide like ResNet-18's, with every head (Learning
Loss objective + TD recording), so all strategies score the same forward pass. Set-based selection
steps are also reported alone, with their peak extra memory (RSS sampled every 20 ms above what the
process held before the step).

Targets: the Core-set and BADGE selection steps at 100,000 candidates, 50,000 labeled centres,
k = 10,000: under 3 minutes and 2 GB extra; per-sample strategies within 1.1x of TiDAL-H; BALD
within T x + 10 %.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from benchmarks.common import write  # noqa: E402


class PeakRSS:
    """Peak resident memory above the starting point, sampled in a thread."""

    def __enter__(self):
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def dataset(work: Path, n_pool: int) -> Path:
    from tidal_dist.data.shards import prepare

    root = work / f"strategies_synthetic_{n_pool}"
    if not (root / "manifest.json").exists():
        prepare(f"synthetic:{n_pool + 1000},10,8x8,1", root,
                shard_size=max(n_pool // 16, 500), progress=False)
    return root


def main(argv: list[str] | None = None, out: Path | None = None) -> dict:
    from tidal_dist.config import load_config
    from tidal_dist.cycle.loop import select
    from tidal_dist.cycle.score import reads_measured_td, score_labeled, score_pool
    from tidal_dist.strategies import ScoreContext, get_strategy, registry
    from tidal_dist.training.session import build_session

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="candidates")
    parser.add_argument("--labeled", type=int, default=50_000, help="labeled set (Core-set's centres)")
    parser.add_argument("--k", type=int, default=10_000, help="budget per query")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    out = out or args.out
    work = Path(args.work or tempfile.mkdtemp(prefix="strategies-bench-"))
    root = dataset(work, args.n + args.labeled)
    cfg = load_config(None, [
        f"data.root={root}", "data.num_workers=0", "data.verify_shards=false",
        "model.backbone=small_cnn", "model.width=64", "train.objective=lloss",
        "al.score_batch_size=512", f"al.budget={args.k}", "al.cluster_factor=10",
        f"run.dir={work / 'run'}"])
    session = build_session(cfg)
    labeled = np.arange(args.labeled, dtype=np.int64)
    candidates = np.arange(args.labeled, args.labeled + args.n, dtype=np.int64)
    ctx = ScoreContext(cycle_seed=1, al=cfg.al)
    # Warm the page cache, the allocator and the kernels before anything is timed.
    score_pool(session, candidates[:2000], get_strategy("tidal_entropy"), work / "warm-up", ctx)
    # The measured-TD strategies score what was measured while training (their cost is that
    # measurement, recorded in each cycle's metrics), so a scoring pass alone cannot time them.
    timed = [s for s in sorted(registry()) if s != "tidal_entropy"
             and not reads_measured_td(get_strategy(s))]
    order = ["tidal_entropy"] + timed + ["tidal_entropy"]
    runs: dict[str, list[dict]] = {}
    for name in order:
        strategy = get_strategy(name)
        t0 = time.perf_counter()
        merged = score_pool(session, candidates, strategy, work / name, ctx)
        kept, _ = score_labeled(session, labeled, work / name, strategy.keeps_labeled, None)
        t1 = time.perf_counter()
        with PeakRSS() as memory:
            queried = select(strategy, merged, kept, args.k, ctx, session.device)
        t2 = time.perf_counter()
        assert len(np.unique(queried["ids"])) == args.k
        runs.setdefault(name, []).append({"score_s": t1 - t0, "select_s": t2 - t1,
                                          "select_extra_mib": memory.extra_mib})
        print(f"{name}: score {t1 - t0:.1f}s select {t2 - t1:.1f}s (+{memory.extra_mib:.0f} MiB)",
              flush=True)
    # TiDAL-H ran first and last: its mean is the baseline, its spread the drift of the run.
    base = np.mean([r["score_s"] + r["select_s"] for r in runs["tidal_entropy"]])
    rows, result = [], {}
    for name, entries in runs.items():
        e = entries[0] if name != "tidal_entropy" else {
            k: float(np.mean([r[k] for r in entries])) for k in entries[0]}
        total = e["score_s"] + e["select_s"]
        strategy = get_strategy(name)
        result[name] = {**e, "total_s": total, "ratio_to_tidal_entropy": total / base,
                        "set_based": strategy.set_based}
        rows.append([name, "set" if strategy.set_based else "per-sample", f"{e['score_s']:.1f}",
                     f"{e['select_s']:.2f}", f"{e['select_extra_mib']:.0f}", f"{total / base:.3f}"])
    drift = [r["score_s"] + r["select_s"] for r in runs["tidal_entropy"]]
    summary = {"n": args.n, "labeled": args.labeled, "k": args.k, "embedding_dim": 512,
               "mc_passes": cfg.al.mc_passes, "tidal_entropy_runs_s": drift, "strategies": result}
    write("strategies", summary,
          ["strategy", "kind", "score s", "select s", "select extra MiB", "total / TiDAL-H"], rows,
          out=out)
    return summary


if __name__ == "__main__":
    main()
