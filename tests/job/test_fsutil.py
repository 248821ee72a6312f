"""Atomic writes: a reader sees the old file or the whole new one, never a partial one."""

import os

import pytest

from tidal_dist.job.fsutil import _umask, atomic_write, atomic_write_json, read_json


def test_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    p = tmp_path / "sub" / "state.json"
    atomic_write_json(p, {"cycle": 1})
    atomic_write_json(p, {"cycle": 2})
    assert read_json(p) == {"cycle": 2}
    assert os.listdir(p.parent) == ["state.json"]
    assert (p.stat().st_mode & 0o777) == 0o666 & ~_umask()


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    p = tmp_path / "state.json"
    atomic_write_json(p, {"cycle": 1})

    def half_then_die(f):
        f.write(b'{"cycle": ')
        raise KeyboardInterrupt  # a kill in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, half_then_die)
    assert read_json(p) == {"cycle": 1}
    assert os.listdir(tmp_path) == ["state.json"]
