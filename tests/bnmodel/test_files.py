"""atomic_open: the whole file or the old one, never half, never a temp file left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bnmodel.files import atomic_open, atomic_write_bytes


def test_writes_the_file_and_creates_its_folder(tmp_path: Path) -> None:
    path = atomic_write_bytes(tmp_path / "a" / "b.bin", b"data")
    assert path.read_bytes() == b"data"
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.bin"]


def test_mode_follows_the_umask_like_open(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "m.onnx", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by a server's own user


def test_a_failing_writer_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = atomic_write_bytes(tmp_path / "m.csv", b"old")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write("half a ")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_an_existing_folder_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError, match="is a folder"), atomic_open(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []
