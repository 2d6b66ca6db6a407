"""The shared-memory registry: regions of POSIX shared-memory objects, seen by every process."""

from __future__ import annotations

import os
import uuid

import pytest
from bnmodel.serve.errors import AlreadyExistsError, InvalidInputError, ModelNotFoundError
from bnmodel.serve.shared_memory import SHM_DIR, SharedMemoryRegistry


@pytest.fixture
def key():
    name = f"bnmodel_test_{uuid.uuid4().hex}"
    path = SHM_DIR / name
    path.write_bytes(bytes(range(256)))
    yield "/" + name
    path.unlink(missing_ok=True)


def test_view_reads_and_writes_the_region_at_its_offsets(tmp_path, key):
    registry = SharedMemoryRegistry(tmp_path / "state.json")
    registry.register("r", key, offset=16, byte_size=64)
    assert bytes(registry.view("r", 4, 4, "input x")) == bytes([20, 21, 22, 23])
    registry.view("r", 0, 2, "output y")[:] = b"\xff\xfe"
    assert (SHM_DIR / key[1:]).read_bytes()[16:18] == b"\xff\xfe"
    [status] = registry.status("r")
    assert (status.name, status.key, status.offset, status.byte_size) == ("r", key, 16, 64)


def test_another_process_sees_registrations_and_unregistrations(tmp_path, key):
    one = SharedMemoryRegistry(tmp_path / "state.json")
    other = SharedMemoryRegistry(tmp_path / "state.json")  # as a second worker would
    one.register("r", key, 0, 8)
    assert bytes(other.view("r", 0, 2, "x")) == b"\x00\x01"
    with pytest.raises(AlreadyExistsError, match="'r' already in manager"):
        other.register("r", key, 0, 8)
    other.unregister("r")
    assert one.status() == []
    with pytest.raises(ModelNotFoundError, match="Unable to find system shared memory region"):
        one.status("r")


def test_error_cases_name_the_region_key_and_sizes(tmp_path, key):
    registry = SharedMemoryRegistry(tmp_path / "state.json")
    with pytest.raises(InvalidInputError, match="Unable to open shared memory region"):
        registry.register("a", "/bnmodel_no_such_object", 0, 8)
    with pytest.raises(InvalidInputError, match="exceeds the 256 bytes"):
        registry.register("a", key, 200, 100)
    with pytest.raises(InvalidInputError, match="is one name"):
        registry.register("a", "/../etc/passwd", 0, 8)
    registry.register("a", key, 0, 8)
    with pytest.raises(InvalidInputError, match=r"input 'x': Invalid offset \+ byte size"):
        registry.view("a", 4, 8, "input 'x'")
    with pytest.raises(InvalidInputError, match="Unable to find"):
        registry.view("b", 0, 1, "input 'x'")
    registry.unregister()
    assert registry.status() == [] and os.path.exists(SHM_DIR / key[1:])  # never unlinked
