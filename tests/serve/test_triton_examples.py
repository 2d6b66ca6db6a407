"""Triton's client examples' call sequences (tests/serve/triton_examples.py) with tritonclient,
against models of the shapes they expect (tests/serve/triton_models.py), with 2 workers: a
shared-memory region registered through one worker is used through whichever gets the infer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_server
from triton_models import ONNX_TYPES, write_example_repository

EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "statistics"]


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    root = write_example_repository(tmp_path_factory.mktemp("examples"))
    with run_server("--model-repository", str(root), "--workers", "2") as server:
        yield server


def _run(server, scenario: str, *args: str) -> dict:
    script = Path(__file__).with_name("triton_examples.py")
    result = subprocess.run(
        [sys.executable, str(script), server.url, server.http_url, scenario, *args],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_example_model_loads(examples):
    assert "NOT loaded" not in examples.ready_line, examples.ready_line


@pytest.mark.parametrize("scenario", ["shm-grpc", "shm-http"])
def test_shared_memory_inputs_and_outputs(examples, scenario):
    found = _run(examples, scenario)
    assert found["sums_ok"] and found["diffs_ok"], found
    assert found["region_param"] == "output_data"
    assert found["regions"] == ["input_data", "output_data"]
    assert found["after_one"] == ["output_data"] and found["after_all"] == []
    errors = found["errors"]
    http = scenario == "shm-http"
    expected = {  # name -> (gRPC status, HTTP status, phrase)
        "twice": ("StatusCode.ALREADY_EXISTS", "409", "'input_data' already in manager"),
        "no key": ("StatusCode.INVALID_ARGUMENT", "400", "Unable to open shared memory region"),
        "too big": ("StatusCode.INVALID_ARGUMENT", "400", "exceeds the 128 bytes"),
        "unknown status": ("StatusCode.NOT_FOUND", "404", "Unable to find system shared memory"),
        "out of range": ("StatusCode.INVALID_ARGUMENT", "400", "Invalid offset + byte size"),
        "unknown region": ("StatusCode.INVALID_ARGUMENT", "400", "region: 'nope'"),
    }
    for name, (grpc_code, http_code, phrase) in expected.items():
        status, message = errors[name]
        assert status == (http_code if http else grpc_code), (name, errors[name])
        assert phrase in message, (name, message)


def test_string_model_of_decimal_numbers(examples):
    assert _run(examples, "string-grpc") == {"sum_ok": True, "diff_ok": True}


def test_int8_add_sub(examples):
    assert _run(examples, "int8-grpc") == {"sum_ok": True, "diff_ok": True}


def test_every_datatype_typed_raw_json_and_binary(examples):
    found = _run(examples, "dtypes")
    assert set(found) == set(ONNX_TYPES)
    for datatype, ways in found.items():
        for way, outcome in ways.items():
            if datatype == "FP16" and way == "grpc-typed":
                assert outcome == "no typed field"  # the protocol has none for FP16
            else:
                assert outcome == "ok", (datatype, way, outcome)


def test_errors_in_tritons_words_and_codes(examples):
    found = _run(examples, "errors")
    assert found["unknown model grpc"][0] == "StatusCode.NOT_FOUND"
    assert found["unknown model grpc"][1].startswith("Request for unknown model: 'nope' is not")
    assert found["unknown model http"][0] == "404"
    assert "Request for unknown model: 'nope'" in found["unknown model http"][1]
    for key, code in (
        ("bad version grpc", "StatusCode.INVALID_ARGUMENT"),
        ("bad version http", "400"),
    ):
        status, message = found[key]
        assert status == code and "version string 'abc'" in message, found[key]
        assert "version should be an integer" in message
    status, message = found["raw and typed"]
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert message.startswith(  # the whole phrase Triton's explicit-content example checks
        "contents field must not be specified when using raw_input_contents for 'INPUT0' "
        "for model 'simple'"
    ), message
    assert found["cuda unregister grpc"] and found["cuda unregister http"]
    assert found["cuda status grpc"] in ({}, {"regions": {}}) and found["cuda status http"] == []
    for key, code in (
        ("cuda register grpc", "StatusCode.INVALID_ARGUMENT"),
        ("cuda register http", "400"),
    ):
        status, message = found[key]
        assert status == code and "CUDA shared memory is not supported" in message, found[key]
    for key in ("extensions", "http extensions"):
        assert set(EXTENSIONS + ["system_shared_memory"]) <= set(found[key]), found[key]


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    root = write_example_repository(tmp_path_factory.mktemp("control"))
    with run_server("--model-repository", str(root), "--allow-model-control") as server:
        yield server, root


@pytest.mark.parametrize("scenario", ["control-grpc", "control-http"])
def test_load_parameters_config_override_and_files(controlled, scenario):
    server, root = controlled
    found = _run(server, scenario, str(root))
    assert found["max_batch_size"] == 4  # the override applied
    invalid = "400" if scenario.endswith("http") else "StatusCode.INVALID_ARGUMENT"
    phrases = {
        "malformed": "parameter 'config' is not a model configuration in JSON",
        "backend": "backend 'tensorrt'",
        "unknown field": 'no field named "max_batchsize"',
        "bad dims": "input 'INPUT0' is INT32 [3]",
        "files without config": "need a 'config' parameter too",
        "long file path": "Invalid file path",
    }
    for case, phrase in phrases.items():
        status, message = found[case]
        assert status == invalid and phrase in message, (case, found[case])
        assert message.startswith("failed to load 'simple'"), message
    assert found["still ready"]  # a refused override leaves the model served
    status, message = found["unknown model"]  # Triton's model-control examples check the phrase
    assert status == ("404" if scenario.endswith("http") else "StatusCode.NOT_FOUND"), status
    assert message.startswith("failed to load 'wrong_model_name', failed to poll from model")
    assert "models in the repository: " in message and "'simple'" in message
    assert found["file versions"] == ["2"] and found["file datatype"] == "INT8"
    assert found["reloaded datatype"] == "INT32"  # a plain load reads the repository again
