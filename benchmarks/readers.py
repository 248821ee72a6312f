"""Data-layer speed on a prepared dataset: prepare time, random-access reads/s, streaming reads/s.

    python benchmarks/readers.py [--root data/shards/fashion_mnist] [--source fashion-mnist]

Reads go through the real transform (PNG decode + normalise), as training and scoring use them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write  # noqa: E402
from tidal_dist.data.manifest import load_manifest  # noqa: E402
from tidal_dist.data.readers import RandomAccessReader, StreamingDataset, stream_loader  # noqa: E402
from tidal_dist.data.shards import prepare  # noqa: E402
from tidal_dist.data.transforms import build_transform  # noqa: E402


def main(argv: list[str] | None = None, out: Path | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="fashion-mnist")
    ap.add_argument("--random-reads", type=int, default=5000)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tidal_readers_"))
    root = work / "shards"
    t0 = time.perf_counter()
    prepare(args.source, root, progress=False)
    prepare_s = time.perf_counter() - t0
    manifest = load_manifest(root)
    pool = manifest.split("pool")
    shard_mb = [s.bytes / 2**20 for s in pool.shards]
    transform = build_transform("none", manifest, train=False)

    reader = RandomAccessReader(root, "pool", transform, verify=True)
    ids = np.random.default_rng(0).choice(pool.ids(), size=args.random_reads, replace=False)
    reader[int(ids[0])]  # open + verify the first shard outside the timing
    t0 = time.perf_counter()
    for i in ids:
        reader[int(i)]
    random_rate = len(ids) / (time.perf_counter() - t0)

    stream = {}
    for workers in (0, 1, 2):
        ds = StreamingDataset(root, "pool", transform, rank=0, world_size=1, verify=False)
        t0 = time.perf_counter()
        n = sum(len(batch[0]) for batch in stream_loader(ds, 256, workers))
        stream[workers] = n / (time.perf_counter() - t0)

    rows = [["prepare", args.source, f"{prepare_s:.1f} s for {manifest.num_samples:,} samples"],
            ["shards", f"{len(pool.shards)} pool shards",
             f"{min(shard_mb):.1f}-{max(shard_mb):.1f} MiB each"],
            ["random access", f"{len(ids):,} random ids, 1 process", f"{random_rate:,.0f} reads/s"]]
    rows += [["streaming", f"{w} loader workers", f"{r:,.0f} reads/s"] for w, r in stream.items()]
    result = {"source": args.source, "prepare_s": prepare_s, "shard_mib": shard_mb,
              "random_reads_per_s": random_rate,
              "streaming_reads_per_s": {str(k): v for k, v in stream.items()}}
    write("readers", result, ["measure", "setting", "result"], rows, out=out)
    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
