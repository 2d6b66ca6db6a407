"""The server's event loop choice (serve/eventloop.py)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
from bnmodel.serve import eventloop
from bnmodel.serve.eventloop import EventLoopError, resolve_loop, run_on_loop
from bnmodel.serve.settings import ServerSettings, SettingsError


def _without_uvloop(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        eventloop.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "uvloop" else real(name, *a),
    )


def test_auto_prefers_uvloop_and_falls_back_to_asyncio(monkeypatch):
    pytest.importorskip("uvloop")
    assert resolve_loop("auto") == "uvloop"
    assert resolve_loop("asyncio") == "asyncio"
    _without_uvloop(monkeypatch)
    assert resolve_loop("auto") == "asyncio"


def test_an_unusable_loop_is_a_settings_error_naming_the_flag(monkeypatch, tmp_path):
    with pytest.raises(EventLoopError, match="--loop must be one of auto, asyncio, uvloop"):
        resolve_loop("trio")
    _without_uvloop(monkeypatch)
    with pytest.raises(SettingsError, match="--loop uvloop: uvloop is not installed"):
        ServerSettings(model_repository=tmp_path, event_loop="uvloop")


@pytest.mark.parametrize("name", ["asyncio", "uvloop"])
def test_the_coroutine_runs_on_the_chosen_loop(name):
    if name == "uvloop":
        uvloop = pytest.importorskip("uvloop")

    async def loop_type():
        return type(asyncio.get_running_loop())

    found = run_on_loop(loop_type(), name)
    if name == "uvloop":
        assert found is uvloop.Loop
    else:
        assert issubclass(found, asyncio.BaseEventLoop) and found.__module__.startswith("asyncio")
