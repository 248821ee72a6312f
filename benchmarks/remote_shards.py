"""Shards read from a URL vs from the local folder, measured in the same run.

    python benchmarks/remote_shards.py [--source synthetic:20000,10,28x28,1]

Serves the prepared folder with a loopback HTTP server (127.0.0.1) and compares, each as a ratio
to the same work on the local files:
  * streaming the pool (1 process, no loader workers, sha256 checked): http:// (webdataset runs
    curl) and pipe:cat (webdataset runs a shell command) vs the local path;
  * filling an empty per-node cache with every pool shard (download + sha256 + write + fsync +
    rename) vs checking the local shards' sha256 (read + hash);
  * random reads from the cached copies vs from the local shards (should be ~1).
The loopback network makes this the overhead of the code path, not of a real network.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import shutil
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write  # noqa: E402
from tidal_dist.data import readers  # noqa: E402
from tidal_dist.data.manifest import load_manifest  # noqa: E402
from tidal_dist.data.readers import RandomAccessReader, StreamingDataset  # noqa: E402
from tidal_dist.data.shards import prepare  # noqa: E402
from tidal_dist.data.transforms import build_transform  # noqa: E402


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _timed(fn) -> float:
    readers._verified_shards.clear()  # every measurement checks the sha256 afresh
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="synthetic:20000,10,28x28,1")
    ap.add_argument("--random-reads", type=int, default=3000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tidal_remote_"))
    root = work / "shards"
    prepare(args.source, root, shard_size=2000, progress=False)
    manifest = load_manifest(root)
    pool = manifest.split("pool")
    total_mib = sum(s.bytes for s in pool.shards) / 2**20
    transform = build_transform("none", manifest, train=False)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0),
                                functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    urls = {"local": None, "http": f"http://127.0.0.1:{httpd.server_address[1]}/",
            "pipe:cat": f"pipe:cat {shlex.quote(str(root))}/{{shard}}"}

    stream_s = {name: _timed(lambda url=url: sum(1 for _ in StreamingDataset(
        root, "pool", transform, shard_url=url, cache_dir=str(work / "none"))))
        for name, url in urls.items()}

    ids = np.random.default_rng(0).choice(pool.ids(), size=args.random_reads, replace=False)
    local = RandomAccessReader(root, "pool", transform)
    check_s = _timed(lambda: local.check_shards_for(pool.ids()))
    cached = RandomAccessReader(root, "pool", transform, shard_url=urls["http"],
                                cache_dir=str(work / "cache"))
    fill_s = _timed(lambda: cached.check_shards_for(pool.ids()))
    random_s = {name: _timed(lambda r=r: [r[int(i)] for i in ids])
                for name, r in (("local", local), ("cache", cached))}
    httpd.shutdown()

    n = pool.num_samples
    rows = [["dataset", args.source, f"{len(pool.shards)} pool shards, {total_mib:.1f} MiB"]]
    rows += [["streaming (sha256 on)", name, f"{n / s:,.0f} reads/s, "
              f"{stream_s['local'] / s:.2f}x local"] for name, s in stream_s.items()]
    rows += [["all pool shards", "local: read + sha256", f"{total_mib / check_s:,.0f} MiB/s"],
             ["all pool shards", "http -> empty cache", f"{total_mib / fill_s:,.0f} MiB/s, "
              f"{check_s / fill_s:.2f}x local"]]
    rows += [["random access", f"{len(ids):,} ids from {name}",
              f"{len(ids) / s:,.0f} reads/s, {random_s['local'] / s:.2f}x local"]
             for name, s in random_s.items()]
    write("remote_shards",
          {"source": args.source, "pool_mib": total_mib,
           "streaming_reads_per_s": {k: n / v for k, v in stream_s.items()},
           "streaming_ratio_to_local": {k: stream_s["local"] / v for k, v in stream_s.items()},
           "local_check_mib_per_s": total_mib / check_s, "cache_fill_mib_per_s": total_mib / fill_s,
           "cache_fill_ratio_to_local_check": check_s / fill_s,
           "random_reads_per_s": {k: len(ids) / v for k, v in random_s.items()}},
          ["measure", "setting", "result"], rows)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
