"""A real, tiny filesystem for disk-full and read-only tests: a tmpfs the test mounts (as root)
and unmounts. Skips the test where mounting is not permitted.

    def test_x(tiny_tmpfs):
        folder = tiny_tmpfs("64k")                  # 64 KB of space
        frozen = tiny_tmpfs("1m", read_only=True)   # a read-only filesystem
"""

import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mounts = []

    def mount(size: str, read_only: bool = False) -> Path:
        point = tmp_path / f"tmpfs{len(mounts)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(folder: Path, name: str = "filler") -> Path:
    """Write zeros into folder/name until the filesystem is full; returns the file."""
    import os

    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                continue
    finally:
        os.close(fd)
    return path
