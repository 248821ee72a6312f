"""Shards served over HTTP (a loopback server started here) or by a `pipe:` command: the same
samples as local shards, a per-node cache of verified copies for random access, damaged
downloads named and fetched again, dead URLs as clear errors."""

import json
import logging
import multiprocessing
import re
import shlex
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.mp import run_module, tail, torchrun
from tidal_dist.cli import main as cli_main
from tidal_dist.config import MUTABLE_KEYS, load_config
from tidal_dist.data.locations import ShardSource
from tidal_dist.data.manifest import load_manifest, summary
from tidal_dist.data.readers import RandomAccessReader, StreamingDataset, stream_loader
from tidal_dist.data.shards import prepare
from tidal_dist.data.transforms import build_transform
from tidal_dist.job.errors import UserError

POOL_SHARDS = [f"pool-{i:06d}.tar" for i in range(6)]


class ShardServer:
    """A threaded HTTP server on 127.0.0.1 serving one folder. Counts GETs per file name and can
    serve a damaged copy of a file: one byte flipped (same size) or cut short, `times` times
    (-1: always)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: Counter[str] = Counter()
        self.damage: dict[str, tuple[str, int]] = {}
        self.delay = 0.0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.lstrip("/").split("?")[0]  # a query only makes URLs distinct
                path = server.folder / name
                with server.lock:
                    server.requests[name] += 1
                    mode, times = server.damage.get(name, ("", 0))
                    if times:
                        server.damage[name] = (mode, times - 1 if times > 0 else times)
                time.sleep(server.delay)
                if "/" in name or not path.is_file():
                    self.send_error(404)
                    return
                data = bytearray(path.read_bytes())
                if times and mode == "flip":
                    data[1600] ^= 0xFF  # inside the first image: the tar stays valid
                elif times and mode == "cut":
                    data = data[:3000]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(bytes(data))

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        self.requests.clear()
        self.damage.clear()
        self.delay = 0.0

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def module_server(synthetic_dataset):
    with pytest.MonkeyPatch.context() as mp:  # curl must not send loopback requests to a proxy
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        server = ShardServer(synthetic_dataset)
        yield server
        server.close()


@pytest.fixture
def server(module_server):
    module_server.reset()
    yield module_server
    module_server.reset()


@pytest.fixture(params=["http", "pipe"])
def shard_url(request, server, synthetic_dataset):
    if request.param == "http":
        return server.url
    return f"pipe:cat {shlex.quote(str(synthetic_dataset))}/{{shard}}"


@pytest.fixture(scope="module")
def transform(synthetic_dataset):
    return build_transform("none", load_manifest(synthetic_dataset), train=False)


@pytest.fixture
def warnings_logged():
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("tidal_dist")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copies(cache: Path) -> list[str]:
    """Names of the files in a cache folder, lock files left out."""
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


def assert_same_samples(got, expected) -> None:
    assert [i for i, _, _ in got] == [i for i, _, _ in expected]
    for (i, image, label), (_, ref_image, ref_label) in zip(got, expected):
        assert label == ref_label and torch.equal(image, ref_image), f"id {i} differs"


# ---------------------------------------------------------------------------------- same samples

def test_streaming_reads_what_local_reads(synthetic_dataset, transform, shard_url, tmp_path):
    cache = tmp_path / "cache"
    for split in ("pool", "test"):
        local = list(StreamingDataset(synthetic_dataset, split, transform))
        for world, workers in ((1, 0), (2, 2)):  # exactly once over ranks x loader workers
            got = []
            for rank in range(world):
                dataset = StreamingDataset(synthetic_dataset, split, transform, rank=rank,
                                           world_size=world, shard_url=shard_url, cache_dir=cache)
                got += [(int(i), image, int(y)) for ids, images, labels in
                        stream_loader(dataset, batch_size=10, num_workers=workers)
                        for i, image, y in zip(ids, images, labels)]
            assert_same_samples(sorted(got, key=lambda s: s[0]), local)
    assert copies(cache) == []  # streaming never downloads into the cache


def test_random_access_reads_what_local_reads(synthetic_dataset, transform, shard_url, server,
                                              tmp_path):
    cache = tmp_path / "cache"
    manifest = load_manifest(synthetic_dataset)
    local = RandomAccessReader(synthetic_dataset, "pool", transform)
    remote = RandomAccessReader(synthetic_dataset, "pool", transform, shard_url=shard_url,
                                cache_dir=str(cache))
    order = np.random.default_rng(1).permutation(203)
    assert_same_samples([remote[i] for i in order], [local[i] for i in order])
    # one verified copy per shard, named by its sha256; no temporaries left
    assert copies(cache) == sorted(f"{s.url[:-4]}.{s.sha256}.tar" for s in manifest.split("pool").shards)
    if shard_url == server.url:
        assert server.requests == Counter({name: 1 for name in POOL_SHARDS})
    # another reader (another process, later) uses the copies; so does streaming the pool
    again = RandomAccessReader(synthetic_dataset, "pool", transform, shard_url=shard_url,
                               cache_dir=str(cache))
    assert_same_samples([again[i] for i in (5, 77, 202)], [local[i] for i in (5, 77, 202)])
    streamed = list(StreamingDataset(synthetic_dataset, "pool", transform, shard_url=shard_url,
                                     cache_dir=str(cache)))
    assert_same_samples(streamed, [local[i] for i in range(203)])
    if shard_url == server.url:
        assert server.requests == Counter({name: 1 for name in POOL_SHARDS})


def _fetch_every_pool_shard(root: str, url: str, cache: str) -> None:
    reader = RandomAccessReader(root, "pool", lambda data: torch.zeros(1), shard_url=url,
                                cache_dir=cache)
    reader.check_shards_for(np.arange(203))


def test_processes_sharing_a_cache_download_each_shard_once(synthetic_dataset, server, tmp_path):
    server.delay = 0.05  # slow enough that the processes overlap
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_fetch_every_pool_shard,
                                 args=(str(synthetic_dataset), server.url, str(cache)))
                 for _ in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * 4
    assert server.requests == Counter({name: 1 for name in POOL_SHARDS})
    assert len(copies(cache)) == 6


# ---------------------------------------------------------------------------------- damage

def test_corrupted_download_is_named_and_fetched_again(synthetic_dataset, transform, server,
                                                       tmp_path, warnings_logged):
    server.damage["pool-000001.tar"] = ("flip", 1)
    reader = RandomAccessReader(synthetic_dataset, "pool", transform, shard_url=server.url,
                                cache_dir=str(tmp_path))
    local = RandomAccessReader(synthetic_dataset, "pool", transform)
    assert_same_samples([reader[37], reader[40]], [local[37], local[40]])
    assert server.requests["pool-000001.tar"] == 2
    messages = [r.getMessage() for r in warnings_logged]
    assert len(messages) == 1
    assert f"shard '{server.url}pool-000001.tar' is corrupted" in messages[0]
    assert "fetching it again (attempt 2 of 3)" in messages[0]


def test_always_corrupted_download_is_an_error(synthetic_dataset, transform, server, tmp_path):
    server.damage["pool-000001.tar"] = ("flip", -1)
    reader = RandomAccessReader(synthetic_dataset, "pool", transform, shard_url=server.url,
                                cache_dir=str(tmp_path))
    assert reader[0][0] == 0
    with pytest.raises(UserError, match=re.escape(f"shard '{server.url}pool-000001.tar' is "
                                                  f"corrupted") + ".*3 downloads in a row"):
        reader[40]
    assert server.requests["pool-000001.tar"] == 3
    assert not any("pool-000001" in name for name in copies(tmp_path))  # no copy, no temporary


@pytest.mark.parametrize("mode", ["flip", "cut"])
def test_streaming_a_damaged_remote_shard_names_it(synthetic_dataset, transform, server, mode):
    # a URL of its own: a process trusts a URL it has verified before, as it does a local file
    url = f"{server.url}{{shard}}?damaged={mode}"
    server.damage["test-000000.tar"] = (mode, -1)
    name = re.escape(f"shard '{server.url}test-000000.tar?damaged={mode}'")
    reason = "is corrupted" if mode == "flip" else "cannot be read: ReadError"
    with pytest.raises(UserError, match=f"{name} {reason}"):
        list(StreamingDataset(synthetic_dataset, "test", transform, ids=np.array([210]),
                              shard_url=url))
    if mode == "flip":  # without verification the damaged bytes are read as they come
        got = list(StreamingDataset(synthetic_dataset, "test", transform, ids=np.array([210]),
                                    shard_url=url, verify=False))
        assert got[0][0] == 210


def test_a_damaged_cached_copy_is_fetched_again(synthetic_dataset, transform, server, tmp_path):
    reader = RandomAccessReader(synthetic_dataset, "pool", transform, shard_url=server.url,
                                cache_dir=str(tmp_path))
    reader[0]
    (copy,) = [tmp_path / name for name in copies(tmp_path)]
    copy.write_bytes(copy.read_bytes()[:5000])  # cut short on disk, after the download
    fresh = RandomAccessReader(synthetic_dataset, "pool", transform, shard_url=server.url,
                               cache_dir=str(tmp_path))
    assert fresh[3][0] == 3
    assert server.requests["pool-000000.tar"] == 2
    assert copy.stat().st_size == load_manifest(synthetic_dataset).split("pool").shards[0].bytes


# ---------------------------------------------------------------------------------- dead URLs

@pytest.mark.parametrize("kind", ["refused", "404", "command"])
def test_dead_url_is_a_clear_error(synthetic_dataset, transform, server, tmp_path, kind):
    url, reason = {
        "refused": (f"http://127.0.0.1:{closed_port()}/", "curl exited with status 7: nothing answers"),
        "404": (f"{server.url}moved/", "curl exited with status 22: the server answered with an HTTP error"),
        "command": ("pipe:cat /nonexistent/{shard}", "the command exited with status 1"),
    }[kind]
    first = (url.replace("{shard}", "pool-000000.tar") if "{shard}" in url
             else url + "pool-000000.tar")
    expected = re.escape(f"shard '{first}' cannot be read: ") + reason
    reader = RandomAccessReader(synthetic_dataset, "pool", transform, shard_url=url,
                                cache_dir=str(tmp_path))
    with pytest.raises(UserError, match=expected):
        reader[3]
    with pytest.raises(UserError, match=expected):
        list(StreamingDataset(synthetic_dataset, "pool", transform, shard_url=url))
    assert copies(tmp_path) == []


def test_missing_download_tool_is_named(synthetic_dataset, transform, server, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no curl on it
    reader = RandomAccessReader(synthetic_dataset, "pool", transform, shard_url=server.url,
                                cache_dir=str(tmp_path / "cache"))
    with pytest.raises(UserError, match="opens it with the `curl` command, which is not installed"):
        reader[0]


def test_unusable_shard_urls_are_refused_early(synthetic_dataset):
    with pytest.raises(UserError, match=r"data.shard_url 's3://bkt/c10/': webdataset cannot open "
                                        r"'s3:' URLs.*pipe:aws s3 cp s3://bucket/c10/\{shard\} -"):
        ShardSource.of(synthetic_dataset, None, "s3://bkt/c10/")
    with pytest.raises(UserError, match=r"a pipe: command must say where the shard's file name goes"):
        ShardSource.of(synthetic_dataset, None, "pipe:cat /data/c10")
    with pytest.raises(UserError, match=r"config key 'data.shard_url'.*must contain \{shard\}"):
        load_config(None, ["data.shard_url=pipe:cat /data/c10"])
    for base in ("pipe:cat x", "s3://bkt/c10/"):  # refused before anything is written
        with pytest.raises(UserError, match=f"--base-url '{re.escape(base)}'"):
            prepare("synthetic:10,2,4x4,1", Path("/nonexistent/never-written"), base_url=base)
    # where shards are read from may change between runs of one run dir
    assert {"data.shard_url", "data.cache_dir"} <= MUTABLE_KEYS


def test_folder_bases(synthetic_dataset, copy_dataset, transform, tmp_path):
    root = copy_dataset(synthetic_dataset)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for shard in root.glob("*.tar"):
        shard.rename(moved / shard.name)
    local = RandomAccessReader(synthetic_dataset, "pool", transform)
    for base in (str(moved), f"file://{moved}/", "../elsewhere"):  # relative: from the root
        source = ShardSource.of(root, None, base)
        assert not source.remote
        reader = RandomAccessReader(root, "pool", transform, shard_url=base)
        assert_same_samples([reader[i] for i in (0, 100)], [local[i] for i in (0, 100)])
    with pytest.raises(UserError, match=re.escape(f"shard '{root / 'pool-000000.tar'}' is missing")):
        RandomAccessReader(root, "pool", transform)[0]


# ---------------------------------------------------------------------------------- prepare, inspect

def test_prepare_records_where_shards_are_served(synthetic_dataset, transform, tmp_path, capsys):
    served = tmp_path / "bucket"
    served.mkdir()
    base = f"pipe:cat {shlex.quote(str(served))}/{{shard}}"
    out = tmp_path / "c"
    assert cli_main(["prepare", "--source", "synthetic:203,5,8x8,1", "--out", str(out),
                     "--shard-size", "37", "--base-url", base]) == 0
    assert f"copy the shards ({out}/*.tar) to {base}" in capsys.readouterr().out
    manifest = load_manifest(out)
    assert manifest.base_url == base and f"shards    served from {base}" in summary(manifest)
    for shard in out.glob("*.tar"):  # "upload" them; the local folder keeps manifest and labels
        shard.rename(served / shard.name)
    assert cli_main(["inspect", str(out), "--verify"]) == 0  # through the manifest's base_url
    assert f"(shards read from {base})" in capsys.readouterr().out
    reader = RandomAccessReader(out, "test", transform, cache_dir=str(tmp_path / "cache"))
    local = RandomAccessReader(synthetic_dataset, "test", transform)
    assert_same_samples([reader[i] for i in (203, 242)], [local[i] for i in (203, 242)])
    assert_same_samples(list(StreamingDataset(out, "test", transform)),
                        list(StreamingDataset(synthetic_dataset, "test", transform)))
    # the same prepare with another base only rewrites the manifest
    prepare("synthetic:203,5,8x8,1", out, shard_size=37, progress=False, base_url="https://h/c/")
    assert "now says its shards are served from https://h/c/" in capsys.readouterr().out
    moved = load_manifest(out)
    assert moved.base_url == "https://h/c/" and moved.splits == manifest.splits
    # a dataset prepared without one has no base_url key: the manifest earlier versions wrote
    assert "base_url" not in json.loads((synthetic_dataset / "manifest.json").read_text())


def test_inspect_verify_reads_remote_shards(synthetic_dataset, server, capsys):
    args = ["inspect", str(synthetic_dataset), "--verify", "--shard-url", server.url]
    assert cli_main(args) == 0
    assert f"all shards match their sha256 in {synthetic_dataset}/manifest.json (shards read from " \
           f"{server.url})" in capsys.readouterr().out
    assert server.requests == Counter({name: 1 for name in POOL_SHARDS + ["test-000000.tar",
                                                                          "test-000001.tar"]})
    server.damage["pool-000003.tar"] = ("flip", -1)
    server.damage["test-000001.tar"] = ("cut", -1)
    assert cli_main(args) == 2  # bad input: the dataset, as served, is not the manifest's
    err = capsys.readouterr().err
    assert f"BAD: shard '{server.url}pool-000003.tar' is corrupted" in err
    assert f"BAD: shard '{server.url}test-000001.tar' is corrupted" in err
    assert "verify: 2 problem(s)" in err


def test_dead_url_ends_a_run_with_exit_2(synthetic_dataset, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/"
    proc = run_module(["train", f"data.root={synthetic_dataset}", f"data.shard_url={url}",
                       f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0",
                       "model.backbone=small_cnn", "model.width=4", "train.epochs=1",
                       "al.initial=20", f"run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2, tail(proc)
    assert re.search(re.escape(f"tidal-dist train: error: shard '{url}pool-0000") + r"\d\d.tar' "
                     r"cannot be read: curl exited with status 7", proc.stderr), tail(proc)
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------- real processes

@pytest.mark.multiprocess
def test_two_process_training_over_http_matches_local(synthetic_dataset, server, tmp_path):
    """Training (random access through the node's cache, shared by both ranks and their loader
    workers) and evaluation (streaming over HTTP: train.data_path=loader, so the test split is
    not kept decoded) give bit-identical results to local shards."""
    worker = "tests/workers/train_worker.py"
    settings = [f"data.root={synthetic_dataset}", "data.num_workers=1", "model.backbone=small_cnn",
                "model.width=4", "train.epochs=2", "train.batch_size=12", "train.eval_batch_size=16",
                "al.initial=61", "run.seed=5", "train.data_path=loader"]
    cache = tmp_path / "cache"
    runs = {}
    for name, extra in (("local", []), ("http", [f"data.shard_url={server.url}",
                                                  f"data.cache_dir={cache}"])):
        out = tmp_path / name
        out.mkdir()
        proc = torchrun(2, [worker, str(out), "train", *settings, *extra])
        assert proc.returncode == 0, tail(proc)
        runs[name] = out
    results = {n: json.loads((out / "result.json").read_text()) for n, out in runs.items()}
    assert results["http"] == results["local"]
    for rank in (0, 1):
        local = torch.load(runs["local"] / f"params.rank{rank}.pt", weights_only=True)
        remote = torch.load(runs["http"] / f"params.rank{rank}.pt", weights_only=True)
        for key in local:
            torch.testing.assert_close(remote[key], local[key], rtol=0, atol=0)
    # both ranks shared one download of each pool shard; the test split was streamed
    assert {n: c for n, c in server.requests.items() if n.startswith("pool")} == \
        {name: 1 for name in POOL_SHARDS}
    assert server.requests["test-000000.tar"] >= 1 and server.requests["test-000001.tar"] >= 1
    assert len(copies(cache)) == 6
