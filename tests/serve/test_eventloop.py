"""The server's event loop choice (serve/settings.py resolve_loop, used by serve/server.py)."""

from __future__ import annotations

import importlib.util

import pytest
from bnmodel.serve import settings as settings_module
from bnmodel.serve.settings import ServerSettings, SettingsError, resolve_loop
from conftest import run_server


def _without_uvloop(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        settings_module.importlib.util,
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
    with pytest.raises(SettingsError, match="--loop must be one of auto, asyncio, uvloop"):
        resolve_loop("trio")
    _without_uvloop(monkeypatch)
    with pytest.raises(SettingsError, match="--loop uvloop: uvloop is not installed"):
        ServerSettings(model_repository=tmp_path, event_loop="uvloop")


@pytest.mark.parametrize("name", ["asyncio", "uvloop"])
def test_the_server_runs_on_the_chosen_loop(repository, name):
    if name == "uvloop":
        pytest.importorskip("uvloop")
    with run_server("--model-repository", str(repository), "--loop", name) as server:
        pass
    assert f"; {name} event loop;" in server.stderr_text()
