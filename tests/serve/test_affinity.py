"""Pinning worker event loops to cores (serve/affinity.py)."""

from __future__ import annotations

import os
import threading

import pytest
from bnmodel.serve.affinity import allowed_cpus, loop_cpu, pin_this_thread
from conftest import run_server

needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(allowed_cpus()) < 2,
    reason="needs CPU affinity and at least 2 CPUs",
)


def test_each_worker_gets_the_next_allowed_core_only_when_asked():
    cpus = [2, 5, 7]
    assert [loop_cpu("on", i, cpus) for i in range(4)] == [2, 5, 7, 2]  # wraps around
    assert loop_cpu("off", 1, cpus) is None
    assert loop_cpu("on", 0, [4]) is None  # one core: nowhere else to be


@needs_affinity
def test_pinning_applies_to_the_calling_thread_only():
    cpus = allowed_cpus()
    seen = {}

    def pinned():
        pin_this_thread([cpus[-1]])
        seen["pinned"] = os.sched_getaffinity(0)
        child = threading.Thread(target=lambda: seen.update(child=os.sched_getaffinity(0)))
        child.start()
        child.join()
        pin_this_thread(cpus)  # what the server's executor threads do
        seen["unpinned"] = os.sched_getaffinity(0)

    thread = threading.Thread(target=pinned)
    thread.start()
    thread.join()
    assert seen["pinned"] == {cpus[-1]}
    assert seen["child"] == {cpus[-1]}  # threads started afterwards inherit it
    assert seen["unpinned"] == set(cpus)
    assert os.sched_getaffinity(0) == set(cpus)  # this thread was never touched


@needs_affinity
def test_each_worker_pins_its_loop_to_its_own_core(repository, tmp_path):
    log = tmp_path / "log"
    args = ("--model-repository", str(repository), "--workers", "2", "--pin-loop", "on")
    with run_server(*args, log_path=log):
        pass
    pinned = sorted(line.split()[-1] for line in log.read_text().splitlines() if "pinned" in line)
    assert pinned == sorted(str(cpu) for cpu in allowed_cpus()[:2])


def test_an_unknown_pin_choice_is_a_settings_error(tmp_path):
    from bnmodel.serve.settings import ServerSettings, SettingsError

    with pytest.raises(SettingsError, match="--pin-loop must be one of off, on"):
        ServerSettings(model_repository=tmp_path, pin_loop="sometimes")
