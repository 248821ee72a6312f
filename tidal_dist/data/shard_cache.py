"""A per-node cache of remote shards, for random access (training reads ids in any order).

    cache = ShardCache("/tmp/tidal_dist_cache-1000")
    path = cache.fetch("https://host/c10/pool-000003.tar", shard)   # a verified local copy

A copy is named by the shard's sha256 (`pool-000003.<sha256>.tar`), so datasets and versions
never collide and a name is only ever the bytes the manifest lists. Every process of a node may
share one folder:
  * one download per shard: an flock on `.NAME.lock` (lock files are left in place: deleting one
    while another process waits on it would let a third lock a fresh file and download twice);
  * the download goes to a unique temporary name, is hashed on the way, and is renamed into
    place only if its size and sha256 match the manifest (fsutil.atomic_write), so a process
    that finds the name finds a complete, verified copy and uses it without reading it again;
  * a mismatch deletes the copy, says so (naming the URL) and fetches again, at most
    `attempts` times, then stops with a UserError naming the URL;
  * temporaries left by a killed process are removed by the next download of that shard.
Nothing is evicted: the folder needs room for the shards a run reads (the pool's, for training).
Why not wids' own cache (`ShardListDataset(cache_dir=...)`): it writes downloads in place under
their final name (a killed download looks complete), does not check them, and its pipe: URLs
are templates for a download command, not webdataset's stream-to-stdout commands.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from pathlib import Path

from tidal_dist.data.locations import ShardMismatch, ShardStream
from tidal_dist.data.manifest import ShardInfo
from tidal_dist.job.errors import UserError
from tidal_dist.job.fsutil import atomic_write

log = logging.getLogger("tidal_dist")


def default_cache_dir() -> Path:
    """$TMPDIR (or /tmp)/tidal_dist_cache-UID: per node, per user (another user's folder in a
    shared /tmp would not be writable)."""
    return Path(tempfile.gettempdir()) / f"tidal_dist_cache-{os.getuid()}"


class ShardCache:
    def __init__(self, folder: str | Path | None = None, attempts: int = 3) -> None:
        self.folder = Path(folder) if folder else default_cache_dir()
        self.attempts = attempts

    def path_for(self, shard: ShardInfo) -> Path:
        stem, dot, ext = shard.url.replace("/", "_").rpartition(".")
        return self.folder / (f"{stem}.{shard.sha256}.{ext}" if dot else f"{ext}.{shard.sha256}")

    def cached(self, shard: ShardInfo) -> Path | None:
        """The verified copy of `shard` if this node has one (a size check, no read)."""
        path = self.path_for(shard)
        try:
            return path if path.stat().st_size == shard.bytes else None
        except OSError:
            return None

    def fetch(self, url: str, shard: ShardInfo) -> Path:
        """A verified local copy of `shard`, downloaded from `url` unless already here."""
        path = self.cached(shard)
        if path is not None:
            return path
        path = self.path_for(shard)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = open(self.folder / f".{path.name}.lock", "a")
        except OSError as e:
            raise UserError(f"shard cache '{self.folder}' cannot be used ({e.strerror}); set "
                            f"data.cache_dir to a writable local folder") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if self.cached(shard) is not None:  # another process fetched it while we waited
                return path
            for stale in self.folder.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)  # left by a killed download (we hold the lock)
            if path.exists():
                path.unlink()  # a wrong-sized file under a verified name: damaged since
            self._download(url, shard, path)
        return path

    def _download(self, url: str, shard: ShardInfo, path: Path) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                with ShardStream(url, shard, check_sha256=True) as stream:
                    atomic_write(path, stream.copy_to)  # renamed into place only if it matches
                return
            except ShardMismatch as e:
                if attempt == self.attempts:
                    raise UserError(f"{e}; {self.attempts} downloads in a row did not match: the "
                                    f"file at that URL is not the shard this dataset's manifest "
                                    f"lists (upload it again, or point data.shard_url at the "
                                    f"right copy)") from None
                log.warning("%s; deleted the download, fetching it again (attempt %d of %d)",
                            e, attempt + 1, self.attempts)
            except OSError as e:  # writing the copy (reading errors are UserErrors)
                raise UserError(f"shard cache '{self.folder}': cannot write a copy of '{url}' "
                                f"({e.strerror or e}); free space there or set data.cache_dir "
                                f"to another local folder") from None
