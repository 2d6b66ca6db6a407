"""Atomic file writes shared by every stage (training, export, serving): torch-free on purpose.

A writer fills a temporary file beside the destination and renames it over the destination only
once the whole content is written, so a reader (or a Ctrl-C) never sees half a file; when the
write or the rename fails, the temporary file is removed, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_bytes"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open()`` for writing to ``path`` through a temp file renamed over it on success.

    The parent folder is created. An existing folder at ``path`` raises IsADirectoryError before
    anything is written. ``kwargs`` go to ``open`` (``newline=""`` for csv, for instance).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a folder, expected a file name", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique hidden name, so two writers of one path never share a temp file; mode 0o666 less
    # the umask, as open() would give (mkstemp's 0o600 would hide the model from a server user).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)
