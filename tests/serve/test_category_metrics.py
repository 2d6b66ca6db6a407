"""Unseen categorical text through a real server: every way of sending inputs is counted once,
exactly as the graph slots it, and shows up on /metrics by model, version and column."""

from __future__ import annotations

import json
import re
import socket
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bnmodel.serve.client import InferenceClient, InferenceServerError  # noqa: E402
from bnmodel.serve.http_client import HttpInferenceClient  # noqa: E402
from conftest import run_server, run_triton_check  # noqa: E402
from models import (  # noqa: E402
    FEATURES,
    RAW_VOCABULARIES,
    config_text,
    mlp_model,
    raw_config_text,
    raw_model,
    raw_other_slots,
    write_model,
)

# Each batch: text the graph compares exactly as sent (case, spaces, accents, blanks).
BATCHES = [
    {"color": ["red", "Red", " red", ""], "size": ["S", "XXL", "M", "m"]},
    {"color": ["grün", "green", "blue"], "size": ["L", "XL", " XL"]},
    {"color": ["purple"], "size": ["S"]},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vocabularies() -> str:
    """The config.pbtxt parameter export writes (its JSON as a quoted text string)."""
    value = json.dumps(json.dumps(RAW_VOCABULARIES))
    return f'parameters {{ key: "vocabularies" value {{ string_value: {value} }} }}'


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """raw: a raw-row model with vocabularies, as export writes it (ONNX metadata and config);
    plain: the same without vocabularies in its contract; clf: numeric only."""
    root = tmp_path_factory.mktemp("categories")
    model = raw_model(seed=4, preprocessing=True)
    write_model(root, "raw", model, raw_config_text("raw", extra=_vocabularies()))
    write_model(root, "plain", raw_model(seed=4), raw_config_text("plain"))
    write_model(root, "clf", mlp_model(), config_text("clf"))
    port = _free_port()
    args = ("--model-repository", str(root), "--metrics-port", str(port))
    with run_server(*args) as running:
        yield running, port, model


def _inputs(batch: dict[str, list[str]]) -> dict[str, np.ndarray]:
    rows = len(batch["color"])
    x = np.random.default_rng(rows).normal(size=(rows, 3)).astype(np.float32)
    return {"features": x, **{c: np.array(v, object).reshape(-1, 1) for c, v in batch.items()}}


def _json_infer(http_url: str, model: str, inputs: dict[str, np.ndarray]) -> None:
    document = {
        "inputs": [
            {
                "name": name,
                "datatype": "FP32" if name == "features" else "BYTES",
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
            for name, array in inputs.items()
        ]
    }
    request = urllib.request.Request(
        f"{http_url}/v2/models/{model}/infer",
        json.dumps(document).encode(),
        {"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert "outputs" in json.loads(response.read())


def _scrape(port: int) -> dict[tuple[str, str, str, str], float]:
    """{(metric, model, version, column): value} of the bnmodel_category_* samples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {}
    pattern = (
        r'^(bnmodel_category_\w+)\{column="([^"]*)",model="([^"]*)",version="([^"]*)"\} (\S+)$'
    )
    for name, column, model, version, value in re.findall(pattern, text, re.MULTILINE):
        found[(name, model, version, column)] = float(value)
    return found


def test_unseen_cells_from_grpc_and_http_are_counted_as_the_graph_slots_them(served):
    server, port, model = served
    ways = 4  # gRPC raw, gRPC typed contents, HTTP binary, HTTP JSON
    with InferenceClient(server.url) as grpc, HttpInferenceClient(server.http_url) as http:
        for batch in BATCHES:
            inputs = _inputs(batch)
            grpc.infer("raw", inputs)
            grpc.infer("raw", inputs, raw=False)
            http.infer("raw", inputs)
            _json_infer(server.http_url, "raw", inputs)
            grpc.infer("plain", inputs)  # counted nowhere, as clf
            grpc.infer("clf", np.zeros((len(batch["color"]), FEATURES), np.float32))
        # Refused by validation (the batch sizes disagree): not received by the model
        bad = {**_inputs(BATCHES[0]), "size": np.array([["zzz"]], object)}
        with pytest.raises(InferenceServerError):
            grpc.infer("raw", bad)
    metrics = _scrape(port)
    graph = {c: 0 for c in RAW_VOCABULARIES}
    for batch in BATCHES:
        for column, count in raw_other_slots(model, batch).items():
            graph[column] += count
    assert graph == {"color": 5, "size": 3}  # the test data holds what it claims
    for column, unseen in graph.items():
        cells = sum(len(b[column]) for b in BATCHES)
        assert metrics[("bnmodel_category_cells_total", "raw", "1", column)] == ways * cells
        assert metrics[("bnmodel_category_unseen_total", "raw", "1", column)] == ways * unseen
    assert {key[1] for key in metrics} == {"raw"}  # plain and clf: no series
    assert len(metrics) == 2 * len(RAW_VOCABULARIES)


def test_unseen_cells_in_shared_memory_are_counted(served):
    server, port, model = served
    before = _scrape(port)
    batch = {"color": ["red", "RED", "blue", ""], "size": ["S", "s", "XL", "xl"]}
    result = run_triton_check("triton_shm_categories.py", server.url, "raw", json.dumps(batch))
    assert result == {"ok": True, "rows": 4}
    after = _scrape(port)
    graph = raw_other_slots(model, batch)
    for column, cells in batch.items():
        unseen = graph[column]
        key = ("bnmodel_category_unseen_total", "raw", "1", column)
        assert after[key] - before[key] == unseen == 2
        key = ("bnmodel_category_cells_total", "raw", "1", column)
        assert after[key] - before[key] == len(cells)
