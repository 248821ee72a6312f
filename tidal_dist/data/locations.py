"""Where a prepared dataset's shards are read from, and reading them through webdataset's opener.

The dataset root is always a local folder: manifest.json, the labels and the wids indexes are
small and are read from there. The shards are found at a *shard base*:

    (none)                                 next to manifest.json, where `prepare` wrote them
    /mnt/fast/c10   or   file:///mnt/...   another folder (a relative path starts at the root)
    https://host/datasets/c10/             a URL: the shard's file name is appended after a '/'
    pipe:aws s3 cp s3://bkt/c10/{shard} -  any base with {shard}: replaced by the file name

The base is config key `data.shard_url` if set, else the manifest's `base_url` (written by
`prepare --base-url`). A base that is not a folder is opened with webdataset's `gopen`, so any
URL it opens works (http(s) through curl, `pipe:` shell commands, gs://, ais://, ...). The
manifest's sizes and sha256 stay the truth for every byte that comes from a URL.

ShardStream is the one way shards are read in sequence (streaming, downloads, `inspect
--verify`): webdataset's opener and tar iterator, with the sha256 computed on the way for remote
shards, and every failure turned into a UserError that names the URL.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlparse
from urllib.request import url2pathname

from webdataset.gopen import Pipe, gopen, gopen_schemes
from webdataset.tariterators import group_by_keys, tar_file_expander

from tidal_dist.data.manifest import ShardInfo, local_shard_problem
from tidal_dist.job.errors import UserError

SHARD_PLACEHOLDER = "{shard}"
CHUNK = 1 << 20


def _scheme(url: str) -> str:
    """'pipe', 'http', 'file', ... ; '' for a plain path."""
    return "pipe" if url.startswith("pipe:") else urlparse(url).scheme


def check_base_url(base: str, origin: str) -> str:
    """A UserError unless webdataset's opener can read shards from `base` (no I/O); `origin`
    names where the base came from."""
    if not base.strip():
        raise UserError(f"{origin}: empty shard base URL")
    if _scheme(base) == "pipe" and SHARD_PLACEHOLDER not in base:
        raise UserError(f"{origin} '{base}': a pipe: command must say where the shard's file name "
                        f"goes with {SHARD_PLACEHOLDER}, e.g. 'pipe:aws s3 cp s3://bucket/c10/"
                        f"{SHARD_PLACEHOLDER} -'")
    scheme = _scheme(base)
    if scheme in ("", "file") or scheme in gopen_schemes:
        return base
    known = ", ".join(sorted(s for s in gopen_schemes if s != "__default__"))
    raise UserError(f"{origin} '{base}': webdataset cannot open '{scheme}:' URLs (it opens local "
                    f"paths, file:, {known}); for S3 use a command, e.g. "
                    f"'pipe:aws s3 cp s3://bucket/c10/{SHARD_PLACEHOLDER} -'")


@dataclass(frozen=True)
class ShardSource:
    """Where one dataset's shards are: `base` None means next to the manifest in `root`."""

    root: Path
    base: str | None = None

    @staticmethod
    def of(root: str | Path, manifest_base: str | None, override: str | None = None) -> ShardSource:
        """The override (config key data.shard_url) wins over the manifest's base_url."""
        base, origin = ((override, "data.shard_url") if override is not None
                        else (manifest_base, f"manifest '{Path(root) / 'manifest.json'}': base_url"))
        if base is not None:
            check_base_url(base, origin)
        return ShardSource(Path(root), base)

    @property
    def remote(self) -> bool:
        """True when the shards come through an opener (downloaded or piped), not a folder."""
        return self.base is not None and _scheme(self.base) not in ("", "file")

    def _filled(self, shard: ShardInfo) -> str:
        assert self.base is not None
        if SHARD_PLACEHOLDER in self.base:
            return self.base.replace(SHARD_PLACEHOLDER, shard.url)
        return self.base.rstrip("/") + "/" + shard.url

    def local_path(self, shard: ShardInfo) -> Path:
        """The shard's file, for a source that is a folder."""
        if self.base is None:
            return self.root / shard.url
        if self.remote:
            raise ValueError(f"shards at '{self.base}' are not local files")
        filled = self._filled(shard)
        path = Path(url2pathname(urlparse(filled).path)) if _scheme(filled) == "file" else Path(filled)
        return path if path.is_absolute() else self.root / path

    def url(self, shard: ShardInfo) -> str:
        """What the shard is opened as (and named as in messages): a URL, or a local path."""
        return self._filled(shard) if self.remote else str(self.local_path(shard))

    def problem(self, shard: ShardInfo) -> str | None:
        """What is wrong with the shard where it is served (None: it matches the manifest).
        Reads every byte of it."""
        if not self.remote:
            return local_shard_problem(self.local_path(shard), shard)
        try:
            with ShardStream(self.url(shard), shard, check_sha256=True) as stream:
                stream.finish()
        except UserError as e:
            return str(e)
        return None


class ShardMismatch(UserError):
    """The bytes read from a URL are not the shard the manifest lists (size or sha256)."""


class _CountingReader:
    """The opened stream, counting and (optionally) hashing what is read through it."""

    def __init__(self, raw: IO[bytes], url: str, hashing: bool) -> None:
        self.raw, self.url = raw, url
        self.sha256 = hashlib.sha256() if hashing else None
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.bytes += len(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        return data

    def __str__(self) -> str:  # webdataset appends str(stream) to tar errors
        return self.url


# curl's exit codes that a user meets when a shard URL is wrong (see `man curl`, EXIT CODES)
_CURL_EXITS = {
    6: "the host name does not resolve",
    7: "nothing answers at that address and port (connection refused or host down)",
    22: "the server answered with an HTTP error (404 not found, 403 forbidden, ...)",
    28: "the transfer timed out",
    35: "the TLS handshake failed",
    60: "the server's certificate is not trusted",
}


def _exit_reason(command: object, status: int) -> str:
    """`command`: what Popen ran, a list (curl and the like) or a shell string (pipe:)."""
    if isinstance(command, list) and command and command[0] == "curl":
        what = _CURL_EXITS.get(status, "see `man curl`, EXIT CODES")
        return f"curl exited with status {status}: {what}"
    if status == 127:
        return "the command was not found (exit status 127)"
    if status < 0:
        return f"the command was killed by signal {-status}"
    return f"the command exited with status {status} (its own message, if any, is above)"


class ShardStream:
    """One pass over a shard in file order, opened with webdataset's `gopen`.

    samples() yields (id, {extension: bytes}) through webdataset's tar iterator. finish() reads
    the rest of the stream and, with check_sha256, compares size and sha256 with the manifest
    (ShardMismatch); copy_to() does the same while writing every byte to a file. Leaving the
    `with` block without finish() stops the transfer quietly (a worker that has its ids).
    """

    def __init__(self, url: str, shard: ShardInfo, check_sha256: bool) -> None:
        self.url, self.shard = url, shard
        try:
            raw = gopen(url, "rb")
        except FileNotFoundError as e:
            missing = e.filename if isinstance(e.filename, str) else None
            if _scheme(url) in ("", "file"):
                raise UserError(f"shard '{url}' is missing (listed in the manifest)") from None
            tool = f"the `{missing}` command" if missing else "a command"
            raise UserError(f"shard '{url}' cannot be opened: webdataset opens it with {tool}, "
                            f"which is not installed or not on PATH") from None
        except (OSError, ValueError) as e:
            raise UserError(f"shard '{url}' cannot be opened: {e}") from None
        self._reader = _CountingReader(raw, url, hashing=check_sha256)
        self._done = False

    def __enter__(self) -> ShardStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self._stop()

    def samples(self, keys_are_ids: bool = True) -> Iterator[tuple[int, dict[str, bytes]]]:
        """keys_are_ids False (a user's shard used in place): the id is the shard's first id plus
        the sample's position, the positions the manifest says were skipped left out."""
        files = tar_file_expander([{"url": self.url, "stream": self._reader}])
        skipped = set(self.shard.skipped_positions)
        next_id = self.shard.first_id
        try:
            for position, sample in enumerate(group_by_keys(files)):
                key = sample.pop("__key__")
                sample.pop("__url__", None)
                if not keys_are_ids:
                    if position not in skipped:
                        yield next_id, sample
                        next_id += 1
                    continue
                if not key.isdigit():
                    raise UserError(f"shard '{self.url}': sample key '{key}' is not an id (not a "
                                    f"shard written by `tidal-dist prepare`)")
                yield int(key), sample
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            raise self._read_error(e) from None

    def finish(self) -> None:
        self._drain(None)

    def copy_to(self, out: IO[bytes]) -> None:
        self._drain(out)

    def _drain(self, out: IO[bytes] | None) -> None:
        """Read to the end (the tar's end padding too), see the command's exit status, compare."""
        reader = self._reader
        if reader.sha256 is None and out is None:  # nothing to check: stop the transfer
            self._stop()
            return
        while True:
            try:
                chunk = reader.read(CHUNK)
            except (OSError, ValueError) as e:
                raise self._read_error(e) from None
            if not chunk:
                break
            if out is not None:
                out.write(chunk)  # a full cache disk raises OSError here: the caller names it
        self._done = True
        try:
            reader.raw.close()  # for a command, waits for it and raises on a failing exit status
        except OSError as e:
            raise self._read_error(e) from None
        if reader.sha256 is not None:
            digest = reader.sha256.hexdigest()
            if reader.bytes != self.shard.bytes or digest != self.shard.sha256:
                raise ShardMismatch(
                    f"shard '{self.url}' is corrupted: its sha256 does not match the manifest "
                    f"({reader.bytes} bytes read, sha256 {digest[:12]}...; manifest "
                    f"{self.shard.bytes} bytes, {self.shard.sha256[:12]}...)")

    def _read_error(self, error: BaseException) -> UserError:
        failed = self._command_failure()
        if failed:
            return UserError(f"shard '{self.url}' cannot be read: {failed}")
        text = str(error.args[0]) if error.args else str(error)
        text = text.split(" @ ")[0]  # webdataset appends " @ <stream>" (the URL, named above)
        fix = ("prepare the dataset again" if _scheme(self.url) in ("", "file")
               else "`tidal-dist inspect ROOT --verify` checks every shard where it is served")
        return UserError(f"shard '{self.url}' cannot be read: {type(error).__name__}: {text} "
                         f"(truncated or damaged? {fix})")

    def _command_failure(self) -> str | None:
        """Why the command behind the stream failed; None if it did not (or there is none)."""
        raw = self._reader.raw
        self._done = True
        if not isinstance(raw, Pipe):
            raw.close()
            return None
        status = _stop_pipe(raw)
        if status in raw.ignore_status or status in (0, -signal.SIGPIPE):
            return None
        popen_args, _popen_kwargs = raw.args
        return _exit_reason(popen_args[0] if popen_args else None, status)

    def _stop(self) -> None:
        """Close early and quietly: a command that dies of the closed pipe is no error here."""
        self._done = True
        raw = self._reader.raw
        if isinstance(raw, Pipe):
            _stop_pipe(raw)
        else:
            raw.close()


def _stop_pipe(pipe: Pipe) -> int:
    """Close our end of a webdataset Pipe and reap its process; its exit status."""
    if not pipe.stream.closed:
        pipe.stream.close()
    try:
        status = pipe.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a command that ignores the closed pipe
        pipe.proc.kill()
        status = pipe.proc.wait()
    pipe.status = status  # so the Pipe's own close() (from __del__) does not raise again
    return status
