"""Atomic file writes shared by every stage (training, export, serving): torch-free on purpose.

A writer fills a temporary file beside the destination and renames it over the destination only
once the whole content is written, so a reader (or a Ctrl-C) never sees half a file; when the
write or the rename fails, the temporary file is removed, so nothing is left behind.
:func:`atomic_folder` does the same for a folder of files (a model version). A failed write
(a full disk: ENOSPC from ``write``, which names no file) raises OSError naming the destination.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_folder", "atomic_open", "atomic_write_bytes"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open()`` for writing to ``path`` through a temp file renamed over it on success.

    The parent folder is created. An existing folder at ``path`` raises IsADirectoryError before
    anything is written. ``kwargs`` go to ``open`` (``newline=""`` for csv, for instance).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a folder, expected a file name", str(path))
    created = _make_parents(path)
    # A unique hidden name, so two writers of one path never share a temp file; mode 0o666 less
    # the umask, as open() would give (mkstemp's 0o600 would hide the model from a server user).
    tmp = _temp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with open(fd, mode, **kwargs) as f:
                yield f
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        _remove_empty(created)
        raise _naming(exc, path) from exc
    except BaseException:
        _remove_empty(created)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp folder beside ``path`` to fill, renamed to ``path`` once the block completes (a
    folder already there is replaced); on failure it is removed with its contents, and so are
    the parent folders it had to create, so no partial or empty folder is left behind."""
    path = Path(path)
    created = _make_parents(path)
    tmp = _temp_name(path)
    try:
        tmp.mkdir()
        try:
            yield tmp
            old = _temp_name(path) if path.exists() else None
            if old is not None:  # a folder cannot be renamed over a non-empty one
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as exc:
        _remove_empty(created)
        inside = str(exc.filename or "").startswith(str(tmp))
        named = path / Path(exc.filename).relative_to(tmp) if inside else path
        raise _naming(exc, named, inside) from exc
    except BaseException:
        _remove_empty(created)
        raise


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _make_parents(path: Path) -> list[Path]:
    """Create ``path``'s missing parent folders; those created, deepest first."""
    missing = []
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty: something else was written there
            folder.rmdir()


def _naming(exc: OSError, path: Path, rename: bool = False) -> OSError:
    """``exc`` with ``path`` as its file name when it names none, or only a temp file."""
    if not rename and exc.filename is not None and ".tmp" not in Path(str(exc.filename)).name:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)
