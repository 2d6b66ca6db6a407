"""Triton's system shared-memory extension: registered POSIX shared-memory regions.

The registry lives in a JSON file that every worker process of one server reads (the name is
fixed at import, before the workers fork), so a region registered through one worker is known
to the others: with SO_REUSEPORT a client's next request may reach any of them. Each process
maps the objects itself, re-reading the file when it changed.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import mmap
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import AlreadyExistsError, InvalidInputError, ModelNotFoundError, ServeError

__all__ = ["NO_CUDA_SHARED_MEMORY", "RegionStatus", "SharedMemoryRegistry", "SHM_DIR"]

SHM_DIR = Path("/dev/shm")
# One registry per server: named by the process that imported this module first (the parent of
# any workers) and when, so a reused pid never finds an old server's regions.
_STATE_NAME = f"bnmodel-shm-{os.getpid()}-{time.time_ns()}.json"
_STATE_OWNER = os.getpid()


@atexit.register
def _remove_state() -> None:
    """The server's state and lock files go when the process that named them exits (the
    supervisor, or the one server process); the regions' objects belong to the clients."""
    if os.getpid() == _STATE_OWNER:
        state = Path(tempfile.gettempdir()) / _STATE_NAME
        for path in (state, state.with_suffix(".lock")):
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class RegionStatus:
    name: str
    key: str
    offset: int
    byte_size: int


def _open(status: RegionStatus) -> mmap.mmap:
    """Map the whole object (mmap offsets must be page-aligned; the region's is not)."""
    path = SHM_DIR / status.key.lstrip("/")
    if not status.key.strip("/") or "/" in status.key.strip("/"):
        raise InvalidInputError(
            f"Unable to open shared memory region: {status.key!r} (a key is one name, "
            "as given to shm_open)"
        )
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise InvalidInputError(
            f"Unable to open shared memory region: {status.key!r} ({path}: {exc.strerror})"
        ) from None
    try:
        size = os.fstat(fd).st_size
        if status.offset + status.byte_size > size:
            raise InvalidInputError(
                f"failed to register shared memory region {status.name!r}: offset "
                f"{status.offset} + byte_size {status.byte_size} exceeds the {size} bytes of "
                f"shared memory object {status.key!r}"
            )
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


class SharedMemoryRegistry:
    """Registered regions by name, shared by the worker processes of one server."""

    def __init__(self, state: Path | None = None) -> None:
        self.state = state or Path(tempfile.gettempdir()) / _STATE_NAME
        self._stamp: tuple[int, ...] | None = None  # (inode, mtime_ns, size) of the file read
        self._regions: dict[str, RegionStatus] = {}
        self._maps: dict[str, mmap.mmap] = {}

    def _sync(self) -> None:
        """Re-read the state file if another process changed it."""
        try:
            st = self.state.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # each write is a new inode
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        regions = {}
        if stamp is not None:
            entries = json.loads(self.state.read_text() or "[]")
            regions = {e["name"]: RegionStatus(**e) for e in entries}
        for name in list(self._maps):
            if regions.get(name) != self._regions.get(name):
                self._close(name)
        self._regions, self._stamp = regions, stamp

    def _write(self) -> None:
        entries = [vars(r) for r in self._regions.values()]
        temporary = self.state.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries))
        temporary.replace(self.state)
        self._stamp = None  # our own write: read it back next time

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on the registry across the server's processes."""
        with open(self.state.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            yield

    def _close(self, name: str) -> None:
        mapping = self._maps.pop(name, None)
        if mapping is not None:
            # A request in flight may still read it (BufferError): closed when it is done.
            with contextlib.suppress(BufferError):
                mapping.close()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidInputError("shared memory region name is empty")
        status = RegionStatus(name, key, offset, byte_size)
        with self._locked():
            self._sync()
            if name in self._regions:
                raise AlreadyExistsError(
                    f"shared memory region {name!r} already in manager (key "
                    f"{self._regions[name].key!r}); unregister it first"
                )
            mapping = _open(status)  # refuses a key that cannot be opened, or a short object
            self._regions[name] = status
            self._maps[name] = mapping
            self._write()

    def unregister(self, name: str = "") -> None:
        """Forget ``name`` ("" = every region); an unknown name is not an error, as in Triton."""
        with self._locked():
            self._sync()
            for found in [name] if name else list(self._regions):
                if self._regions.pop(found, None) is not None:
                    self._close(found)
            self._write()

    def status(self, name: str = "") -> list[RegionStatus]:
        self._sync()
        if not name:
            return sorted(self._regions.values(), key=lambda r: r.name)
        return [self._region(name)]

    def _region(self, name: str, error: type[ServeError] = ModelNotFoundError) -> RegionStatus:
        found = self._regions.get(name)
        if found is None:
            raise error(
                f"Unable to find system shared memory region: {name!r} (registered: "
                f"{', '.join(map(repr, sorted(self._regions))) or 'none'})"
            )
        return found

    def view(self, name: str, offset: int, byte_size: int, where: str) -> memoryview:
        """``byte_size`` bytes at ``offset`` of region ``name``, without a copy."""
        self._sync()
        region = self._region(name, InvalidInputError)  # in a request: a bad argument
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise InvalidInputError(
                f"{where}: Invalid offset + byte size for shared memory region {name!r}: "
                f"offset {offset} + byte_size {byte_size} exceeds the region's "
                f"{region.byte_size} bytes"
            )
        mapping = self._maps.get(name)
        if mapping is None or mapping.closed:
            mapping = self._maps[name] = _open(region)
        start = region.offset + offset
        return memoryview(mapping)[start : start + byte_size]

    def close(self) -> None:
        for name in list(self._maps):
            self._close(name)


class _NoCudaSharedMemory:
    """The CUDA shared-memory extension of a server that holds no CUDA regions (not implemented;
    Triton's client examples clear CUDA regions before they start, so status and unregister
    answer as for a server holding none)."""

    def register(self, name: str) -> None:
        raise InvalidInputError(
            f"CUDA shared memory region {name!r}: CUDA shared memory is not supported by this "
            "server; register system shared memory (/v2/systemsharedmemory) instead"
        )

    def unregister(self, name: str = "") -> None:
        """Nothing to forget: no CUDA region can be registered."""

    def status(self, name: str = "") -> list[RegionStatus]:
        if name:
            raise ModelNotFoundError(
                f"Unable to find cuda shared memory region: {name!r} (CUDA shared memory is "
                "not supported by this server)"
            )
        return []


NO_CUDA_SHARED_MEMORY = _NoCudaSharedMemory()
