"""Evaluation and scoring passes: the split kept decoded on the device vs streamed from the shards.

    python benchmarks/eval_passes.py            # results in benchmarks/results/eval_passes.*
    python benchmarks/eval_passes.py --pool 3000 --candidates 1000 --out /tmp/x   # a smoke test
    (also part of benchmarks/run.py)

What a cycle of the Fashion-MNIST protocols does after training, timed pass by pass on one
process: evaluate the whole test split (a fifth of the pool's size), then score a fresh candidate subset drawn from the pool
(`inference.predict` over its ids, the model's forward only), for `--cycles` cycles. Two sessions
on the same real shards (synthetic 28x28 grayscale PNGs written by prepare) and the same model:
`train.data_path=loader` streams every pass (data/readers.StreamingDataset: read each tar, decode
each PNG), the default keeps each split decoded (data/decoded_split.py: an id is decoded at its
first pass, then only indexed). The first decoded cycle pays for decoding what it reads; the
ratio that carries over is streamed / decoded per pass after it. The outputs of the two are
checked equal (logits, to the bit) before anything is timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TQDM_DISABLE", "1")

from benchmarks.common import write  # noqa: E402
from tidal_dist.config import load_config  # noqa: E402
from tidal_dist.data.manifest import load_manifest  # noqa: E402
from tidal_dist.data.shards import prepare  # noqa: E402
from tidal_dist.training.inference import predict  # noqa: E402
from tidal_dist.training.session import build_session  # noqa: E402


def session_for(root: Path, run_dir: Path, data_path: str):
    cfg = load_config(None, [f"data.root={root}", "data.num_workers=0", "model.backbone=small_cnn",
                             "model.width=16", "al.score_batch_size=512",
                             "train.eval_batch_size=512", f"train.data_path={data_path}",
                             f"run.dir={run_dir}"])
    session = build_session(cfg)
    torch.manual_seed(0)  # the same weights in both sessions
    for p in session.model.parameters():
        p.data.normal_(0, 0.05)
    return session


def one_pass(session, split: str, ids, batch: int) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    logits = [out["logits"] for _, _, out in predict(session, split, batch, ids=ids)]
    return time.perf_counter() - t0, torch.cat(logits)


def main(argv: list[str] | None = None, out: Path | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=50_000, help="pool size; the test split is a fifth")
    ap.add_argument("--candidates", type=int, default=10_000)
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default "
                    "benchmarks/results)")
    args = ap.parse_args(argv)
    out = args.out or out
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    work = Path(tempfile.mkdtemp(prefix="eval_passes_"))
    root = work / "shards"
    prepare(f"synthetic:{args.pool},10,28x28,1", root, shard_size=10_000, progress=False)
    manifest = load_manifest(root)
    pool = manifest.split("pool").ids()
    test_n = manifest.split("test").num_samples
    rng = np.random.default_rng(0)
    draws = [np.sort(rng.choice(pool, min(args.candidates, len(pool)), replace=False))
             for _ in range(args.cycles)]
    sessions = {p: session_for(root, work / p, p) for p in ("loader", "auto")}
    # equal outputs first: the decoded path changes where the images come from, nothing else
    for split, ids in (("test", None), ("pool", draws[0][:1000])):
        if split == "test" and not test_n:
            continue
        a = one_pass(sessions["loader"], split, ids, 512)[1]
        b = one_pass(sessions["auto"], split, ids, 512)[1]
        assert torch.equal(a, b), f"{split}: the decoded path's logits differ from the streamed"
    sessions = {p: session_for(root, work / (p + "2"), p) for p in ("loader", "auto")}  # cold
    rows, cycles = [], []
    for k, ids in enumerate(draws):
        row = {"cycle": k}
        for path, session in sessions.items():
            name = "streamed" if path == "loader" else "decoded"
            row[f"{name}_test_s"] = one_pass(session, "test", None, 512)[0] if test_n else 0.0
            row[f"{name}_score_s"] = one_pass(session, "pool", ids, 512)[0]
        cycles.append(row)
        stream = row["streamed_test_s"] + row["streamed_score_s"]
        dec = row["decoded_test_s"] + row["decoded_score_s"]
        rows.append([k, f"{row['streamed_test_s']:.2f}", f"{row['streamed_score_s']:.2f}",
                     f"{row['decoded_test_s']:.2f}", f"{row['decoded_score_s']:.2f}",
                     f"{stream / dec:.1f}"])
    later = cycles[1:] or cycles
    ratio = (sum(c["streamed_test_s"] + c["streamed_score_s"] for c in later)
             / sum(c["decoded_test_s"] + c["decoded_score_s"] for c in later))
    result = {"pool": len(pool), "test": test_n, "candidates": args.candidates,
              "cycles": cycles, "ratio_after_first_cycle": ratio}
    rows.append(["cycles 1+", "", "", "", "", f"{ratio:.1f}"])
    write("eval_passes", result, ["cycle", "streamed test s", "streamed score s",
                                  "decoded test s", "decoded score s", "streamed / decoded"],
          rows, out=out)
    return result


if __name__ == "__main__":
    main()
