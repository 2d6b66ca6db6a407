"""Fixtures: a temp model repository and real `bnmodel serve` processes on free local ports."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from models import config_text, mlp_model, raw_config_text, raw_model, write_model  # noqa: E402

from bnmodel.launcher import ServerProcess, spawn_server  # noqa: E402


@contextlib.contextmanager
def run_server(
    *args: str, timeout: float = 30.0, log_path: Path | None = None
) -> Iterator[ServerProcess]:
    """`python -m bnmodel serve ARGS --port 0` on 127.0.0.1; always stopped afterwards.

    One server process unless ``args`` name ``--workers``: statistics are per process, and
    most tests count what one process saw (test_workers.py tests several).
    ``log_path``: the server's log goes to that file instead of being kept in memory.
    """
    if "--workers" not in args:
        args = (*args, "--workers", "1")
    with spawn_server(args, timeout=timeout, log_path=log_path) as server:
        yield server


def run_triton_check(script: str, url: str, *args: str) -> dict:
    """tests/serve/SCRIPT (tritonclient) in a process of its own, where its generated protobuf
    modules cannot clash with ours; what it printed, as JSON."""
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name(script)), url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def onnx_outputs(
    repository: Path, model: str, inputs: np.ndarray | dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Every output of REPOSITORY/MODEL/1/model.onnx run by ONNX Runtime directly (the reference
    served answers are compared with); an array is the ``features`` input."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(repository / model / "1" / "model.onnx"))
    feeds = inputs if isinstance(inputs, dict) else {"features": inputs}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    """clf (FP32 classifier), reg (regressor), half (FP16 classifier), raw (a raw-row
    classifier: features FP32 [3] + string inputs color and size); max_batch_size 64."""
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "clf", mlp_model(), config_text("clf"))
    write_model(root, "reg", mlp_model("regression", seed=1), config_text("reg", "regression"))
    write_model(root, "half", mlp_model(fp16=True, seed=2), config_text("half", fp16=True))
    write_model(root, "raw", raw_model(seed=4), raw_config_text("raw"))
    return root


@pytest.fixture(scope="session")
def server(repository) -> Iterator[ServerProcess]:
    # Model control on: the tritonclient check loads and unloads (off by default in `serve`).
    with run_server("--model-repository", str(repository), "--allow-model-control") as running:
        yield running
