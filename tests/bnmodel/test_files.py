"""atomic_open, atomic_folder: the whole file (folder) or the old one, never half, never a temp
file or an empty folder left behind, and a full disk named by the path it could not write."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from bnmodel import files
from bnmodel.files import atomic_folder, atomic_open, atomic_write_bytes


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


class _FullDisk:
    """A file object whose writes fail as on a full disk (ENOSPC names no file)."""

    def __init__(self, fd: int, *args, **kwargs) -> None:
        os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_the_file_and_leaves_no_folder_it_created(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "open", _FullDisk, raising=False)
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / "new" / "deeper" / "m.onnx", b"data")
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "new" / "deeper" / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "m" / "1"
    with atomic_folder(target) as staging:
        atomic_write_bytes(staging / "a", b"first")
    with atomic_folder(target) as staging:  # replaces the folder that is there
        atomic_write_bytes(staging / "b", b"second")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    monkeypatch.setattr(files, "open", _FullDisk, raising=False)
    with pytest.raises(OSError) as info, atomic_folder(tmp_path / "m" / "2") as staging:
        atomic_write_bytes(staging / "model.onnx", b"x")
    assert info.value.filename == str(tmp_path / "m" / "2" / "model.onnx")  # not the temp name
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]
    assert (target / "b").read_bytes() == b"second"
