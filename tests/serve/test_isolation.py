"""A repository as real ones are: one broken model never takes the server down.

One good model, one without a batch axis, and many broken ones: the server starts, serves the
two through tritonclient, reports each broken one (one log line naming model, file and cause;
ModelReady false; UNAVAILABLE in RepositoryIndex with the reason; named on the ready line),
and exits 0 on SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import onnx_outputs, run_server, run_triton_check
from models import config_text, failing_model, fixed_config, fixed_model, mlp_model, write_model

from bnmodel.launcher import ServerStartError

# name -> (what is wrong, a word the reason must hold)
BROKEN = {
    "bad_enum": ("data_type 99: not a DataType", "data_type"),
    "not_utf8": ("a byte that is not UTF-8 in config.pbtxt", "UnicodeDecodeError"),
    "superscript": ('only a version folder "²" (isdigit, but no int)', "no version folder"),
    "huge": ("dims [100000000]: more than a gRPC message holds", "gRPC's largest message"),
    "garbage_onnx": ("model.onnx is not ONNX", "could not be loaded"),
    "empty_config": ("config.pbtxt is empty", "no input or no output"),
    "negative_batch": ("max_batch_size: -5", "max_batch_size"),
    "mismatch": ("config says 5 features, the graph 8", "in the graph"),
    "bad_text": ("config.pbtxt is not text format", "invalid model configuration"),
}


@pytest.fixture(scope="module")
def mixed_repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    write_model(root, "good", mlp_model(), config_text("good"))
    write_model(root, "fixed", fixed_model(), fixed_config("fixed"))
    write_model(root, "bad_enum", mlp_model(), config_text("bad_enum").replace("TYPE_FP32", "99"))
    path = write_model(root, "not_utf8", mlp_model(), config_text("not_utf8"))
    (path.parents[1] / "config.pbtxt").write_bytes(b'name: "not_utf8" # \xff\xfe\n')
    path = write_model(root, "superscript", mlp_model(), config_text("superscript"))
    path.parent.rename(path.parents[1] / "\u00b2")
    failing = (
        'max_batch_size: 8 input [{ name: "features" data_type: TYPE_FP32 dims: [ 8 ] }] '
        'output [{ name: "y" data_type: TYPE_FP32 dims: [ 5 ] }]'
    )
    write_model(root, "fails_to_run", failing_model(), failing)
    write_model(
        root, "huge", mlp_model(), config_text("huge").replace("dims: [ 8 ]", "dims: [ 100000000 ]")
    )
    path = write_model(root, "garbage_onnx", mlp_model(), config_text("garbage_onnx"))
    path.write_bytes(b"\x08\x07 this is not an onnx file")
    write_model(root, "empty_config", mlp_model(), "")
    write_model(
        root,
        "negative_batch",
        mlp_model(),
        config_text("negative_batch").replace("max_batch_size: 64", "max_batch_size: -5"),
    )
    write_model(
        root, "mismatch", mlp_model(), config_text("mismatch").replace("dims: [ 8 ]", "dims: [ 5 ]")
    )
    write_model(
        root, "bad_text", mlp_model(), "input { name: features data_type: TYPE_FP32 dims: [8\n"
    )
    return root


def test_broken_models_fail_alone_and_the_rest_is_served(mixed_repository, tmp_path):
    args = ("--model-repository", str(mixed_repository), "--workers", "2", "--device", "cpu")
    with run_server(*args) as server:
        ready = server.ready_line
        # A graph that fails on the load-time timing run still loads (one warning): the
        # example inputs are a guess, and real requests decide.
        assert "models: fails_to_run, fixed, good;" in ready, ready
        assert all(name in ready.split("NOT loaded:")[1] for name in BROKEN), ready
        rng = np.random.default_rng(0)
        cases = {
            "good": {str(n): rng.normal(size=(n, 8)).astype(np.float32) for n in (1, 5)},
            "fixed": {str(i): rng.normal(size=8).astype(np.float32) for i in range(3)},
        }
        for model, batches in cases.items():
            np.savez(tmp_path / "in.npz", **batches)
            run_triton_check(
                "triton_check.py",
                server.url,
                "infer",
                model,
                str(tmp_path / "in.npz"),
                str(tmp_path / "out.npz"),
            )
            outputs = np.load(tmp_path / "out.npz")
            for key, x in batches.items():
                for name, expected in onnx_outputs(mixed_repository, model, x).items():
                    np.testing.assert_allclose(outputs[f"{key}/{name}"], expected, rtol=1e-5)
        states = run_triton_check("triton_check.py", server.url, "states", "good", "fixed", *BROKEN)
        process = server.process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        log = server.stderr_text()
    assert states["ready"] == {"good": True, "fixed": True, **dict.fromkeys(BROKEN, False)}
    shape = {t["name"]: t["shape"] for t in states["metadata"]["fixed"]["inputs"]}
    assert shape == {"features": ["8"]}  # no -1: no batch axis
    for name, (fault, word) in BROKEN.items():
        state, reason = states["index"][name]
        assert state == "UNAVAILABLE" and word in reason, (fault, reason)
        lines = [line for line in log.splitlines() if f"failed to load model '{name}'" in line]
        assert len(lines) == 1, (fault, lines)  # once, though two workers loaded it
        assert name in lines[0] and word in lines[0], lines[0]
    warned = [line for line in log.splitlines() if "the timing run on example inputs" in line]
    assert len(warned) == 1 and "'fails_to_run'" in warned[0], warned
    assert "Traceback" not in log


def test_exit_on_error_stops_at_the_first_broken_model(mixed_repository):
    args = ("--model-repository", str(mixed_repository), "--exit-on-error", "--device", "cpu")
    with pytest.raises(ServerStartError, match="exited with 1") as info, run_server(*args):
        pass
    assert "--exit-on-error: 9 model(s) failed to load" in str(info.value)


def test_an_empty_repository_shows_the_layout_it_expects(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnmodel",
            "serve",
            "--model-repository",
            str(tmp_path),
            "--port",
            "0",
            "--workers",
            "1",
            "--no-http",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"no models in {tmp_path}: expected {tmp_path}/NAME/config.pbtxt and " in result.stderr
    assert f"{tmp_path}/NAME/1/model.onnx" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def test_a_busy_port_is_reported_in_our_words_alone(repository):
    with run_server("--model-repository", str(repository)) as server:
        port = server.url.rsplit(":", 1)[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "bnmodel",
                "serve",
                "--model-repository",
                str(repository),
                "--port",
                port,
                "--workers",
                "1",
                "--no-http",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    first = result.stderr.strip().splitlines()[0]
    assert f"cannot listen on 127.0.0.1:{port}" in first, result.stderr
