"""BYTES inputs: raw-row models with a numeric ``features`` tensor and string columns.

Codecs, the test model itself, batching of several inputs, and the served model ("raw" in the
session repository, beside the numeric ones) through our clients, tritonclient and plain HTTP.
The classes of bad request live in tools/bad_request_matrix.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from bnmodel.serve.batching import BatchPolicy, Scheduler
from bnmodel.serve.client import InferenceClient, InferenceServerError
from bnmodel.serve.codec import (
    BYTES,
    datatype_from_config,
    datatype_from_ort,
    datatype_of,
    decode_raw,
    decode_typed,
    encode_raw,
    encode_typed,
)
from bnmodel.serve.errors import InvalidInputError
from bnmodel.serve.http_client import HttpInferenceClient
from bnmodel.serve.proto import grpc_service_pb2 as pb
from bnmodel.serve.statistics import VersionStats
from conftest import onnx_outputs, run_server, run_triton_check
from hypothesis import given, settings
from hypothesis import strategies as st
from models import RAW_NUMERIC, RAW_VOCABULARIES, raw_model, raw_reference

from bnmodel.remote import predict_file

HERE = Path(__file__).parent
WORDS = ["red", "green", "blue", "", "purple", "bl\u00fc", "\u7d05", "x" * 300]


def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` raw rows: numeric features with NaN, known, unseen and empty strings."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(RAW_NUMERIC))).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    sizes = [*RAW_VOCABULARIES["size"], "", "XXL"]
    return {
        "features": x,
        "color": np.array([[WORDS[i]] for i in rng.integers(0, len(WORDS), n)], dtype=object),
        "size": np.array([[sizes[i]] for i in rng.integers(0, len(sizes), n)], dtype=object),
    }


def _same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-6)


# -- codec ------------------------------------------------------------------------------------


def test_bytes_is_type_string_and_ort_string():
    assert datatype_from_config("TYPE_STRING") is BYTES
    assert datatype_from_ort("tensor(string)") is BYTES
    for array in (np.array(["a"]), np.array([b"a"]), np.array(["a"], dtype=object)):
        assert datatype_of(array) is BYTES


def test_raw_and_typed_bytes_round_trip_every_string():
    strings = np.array(WORDS, dtype=object).reshape(4, 2)
    dt, raw = encode_raw(strings)
    assert dt is BYTES and raw[:7] == b"\x03\x00\x00\x00red"
    decoded = decode_raw(raw, "BYTES", (4, 2))
    assert decoded.dtype == object and decoded.tolist() == strings.tolist()
    assert decode_raw(memoryview(raw), "BYTES", (4, 2)).tolist() == strings.tolist()
    contents = pb.InferTensorContents()
    assert encode_typed(strings, contents) is BYTES
    assert list(contents.bytes_contents) == [w.encode() for w in WORDS]
    assert decode_typed(contents, "BYTES", (4, 2)).tolist() == strings.tolist()


@pytest.mark.parametrize(
    "words",
    [["a", "", "bc" * 100], ["a", "", "c" * 200], ["\u00e9", "", "x"]],
    ids=["ascii", "ascii-long-length", "utf8"],
)
def test_ascii_and_utf8_buffers_decode_alike(words):
    array = np.array(words, dtype=object)
    assert decode_raw(encode_raw(array)[1], "BYTES", (3,)).tolist() == words


@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        (
            b"\x01\x00\x00\x00a\x02\x00",
            (2, 1),
            "raw contents end (7 bytes) inside the 4-byte length",
        ),
        (b"\x05\x00\x00\x00abc", (1, 1), "element 0 declares 5 bytes, but only 3 remain"),
        (b"\x01\x00\x00\x00ab", (1, 1), "raw contents hold 6 bytes, 1 more than the 1 BYTES"),
        (b"\x01\x00\x00\x00a\x02\x00\x00\x00\xc3\x28", (2, 1), "element 1 is not valid UTF-8"),
        (b"\x05\x00\x00\x00\xc3\xa9", (1,), "element 0 declares 5 bytes, but only 2 remain"),
    ],
)
def test_malformed_raw_bytes_say_what_is_wrong(raw, shape, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decode_raw(raw, "BYTES", shape)


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.text(), max_size=8))
def test_any_text_round_trips(words):
    array = np.array(words, dtype=object)
    assert decode_raw(encode_raw(array)[1], "BYTES", (len(words),)).tolist() == words


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64), count=st.integers(0, 5))
def test_any_bytes_decode_or_raise_a_clear_error(raw, count):
    try:
        values = decode_raw(raw, "BYTES", (count,))
    except InvalidInputError as exc:
        assert "element" in str(exc) or "raw contents" in str(exc)
    else:
        assert values.shape == (count,) and all(type(v) is str for v in values)
        assert encode_raw(values)[1] == raw


def test_typed_bytes_that_are_not_utf8_name_the_element():
    contents = pb.InferTensorContents(bytes_contents=[b"ok", b"ok", b"\xffbad"])
    with pytest.raises(InvalidInputError, match=r"element 2 is not valid UTF-8 \(byte 0xff"):
        decode_typed(contents, "BYTES", (3, 1))
    with pytest.raises(InvalidInputError, match="typed contents hold 3 values, expected 2"):
        decode_typed(pb.InferTensorContents(bytes_contents=[b"a"] * 3), "BYTES", (2, 1))


def test_encoding_refuses_elements_that_are_not_strings():
    with pytest.raises(InvalidInputError, match="BYTES element 1 is int 7, expected str or bytes"):
        encode_raw(np.array(["a", 7], dtype=object))
    with pytest.raises(InvalidInputError, match="BYTES element 0 has no UTF-8 form"):
        encode_raw(np.array(["\ud800"], dtype=object))


# -- the test model ---------------------------------------------------------------------------


def test_raw_model_imputes_and_sends_unseen_and_empty_strings_to_the_other_slot():
    model = raw_model(seed=4)
    session = ort.InferenceSession(model.SerializeToString())
    rows = _rows(32, 0)
    # The first layer's pre-activation is an intermediate value: expose it as an output.
    first = [n.input[0] for n in model.graph.node if n.op_type == "Relu"][0]
    inputs = [i.name for i in session.get_inputs()]
    assert inputs == ["features", "color", "size"]
    assert [i.type for i in session.get_inputs()] == ["tensor(float)", *["tensor(string)"] * 2]
    model.graph.output.add(name=first)
    pre = ort.InferenceSession(model.SerializeToString()).run([first], rows)[0]
    np.testing.assert_allclose(pre, raw_reference(model, **_split(rows)), rtol=1e-5, atol=1e-5)
    unseen = {**rows, "color": np.full((32, 1), "never seen", dtype=object)}
    empty = {**rows, "color": np.full((32, 1), "", dtype=object)}
    np.testing.assert_array_equal(session.run(None, unseen)[0], session.run(None, empty)[0])


def _split(rows: dict[str, np.ndarray]) -> dict:
    return {
        "features": rows["features"],
        "columns": {k: v for k, v in rows.items() if k != "features"},
    }


# -- batching ---------------------------------------------------------------------------------


class HeldRunner:
    """The raw model's ORT session; records batch sizes; the first run waits at a gate."""

    def __init__(self, model) -> None:
        self.session = ort.InferenceSession(model.SerializeToString())
        self.gate, self.started = threading.Event(), threading.Event()
        self.runs: list[int] = []

    def __call__(self, inputs):
        self.started.set()
        self.gate.wait(30)
        self.runs.append(len(inputs["features"]))
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, dict(inputs)), strict=True))


def test_dynamic_batching_merges_every_input_and_returns_each_request_its_rows():
    model = raw_model(seed=4)
    reference = ort.InferenceSession(model.SerializeToString())

    async def main():
        runner = HeldRunner(model)
        executor = ThreadPoolExecutor(2)
        scheduler = Scheduler(
            runner, executor, BatchPolicy(64, 10**9, 100, 1), VersionStats(), True
        )
        first = asyncio.create_task(scheduler.submit(_rows(1, 99), 1))
        await asyncio.to_thread(runner.started.wait, 10)
        requests = [_rows(n, seed) for seed, n in enumerate([3, 1, 5, 2])]
        tasks = [asyncio.create_task(scheduler.submit(r, len(r["features"]))) for r in requests]
        async with asyncio.timeout(10):
            while scheduler.pending < 5:
                await asyncio.sleep(0.001)
        runner.gate.set()
        results = await asyncio.gather(*tasks)
        await first
        executor.shutdown()
        return runner.runs, requests, results

    runs, requests, results = asyncio.run(main())
    assert runs == [1, 11]  # the four queued requests ran as one batch
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result["probabilities"], reference.run(None, request)[1])


# -- served: our clients, tritonclient, plain HTTP ---------------------------------------------


def test_metadata_and_config_list_every_input(server):
    with InferenceClient(server.url) as client:
        info = client.model_metadata("raw")
        config = client.model_config("raw")
    assert [(t.name, t.datatype, t.shape) for t in info.inputs] == [
        ("features", "FP32", (-1, 3)),
        ("color", "BYTES", (-1, 1)),
        ("size", "BYTES", (-1, 1)),
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("features", 11, [3]),  # TYPE_FP32
        ("color", 13, [1]),  # TYPE_STRING
        ("size", 13, [1]),
    ]
    with urllib.request.urlopen(f"{server.http_url}/v2/models/raw") as answer:
        http_inputs = json.loads(answer.read())["inputs"]
    assert [t["datatype"] for t in http_inputs] == ["FP32", "BYTES", "BYTES"]
    with urllib.request.urlopen(f"{server.http_url}/v2/models/raw/config") as answer:
        http_config = json.loads(answer.read())
    assert [t["data_type"] for t in http_config["input"]] == ["TYPE_FP32", *["TYPE_STRING"] * 2]


@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "bytes_contents"])
def test_grpc_client_sends_several_inputs_with_bytes(server, repository, raw):
    rows = _rows(9, 1)
    with InferenceClient(server.url) as client:
        _same(client.infer("raw", rows, raw=raw), onnx_outputs(repository, "raw", rows))


def test_http_client_sends_bytes_as_binary_data(server, repository):
    rows = _rows(64, 2)
    with HttpInferenceClient(server.http_url) as client:
        _same(client.infer("raw", rows), onnx_outputs(repository, "raw", rows))


def test_plain_json_strings_and_null_for_a_missing_number(server, repository):
    rows = _rows(4, 3)
    features = [[None if np.isnan(v) else float(v) for v in row] for row in rows["features"]]
    body = {
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [4, 3], "data": features},
            {
                "name": "color",
                "datatype": "BYTES",
                "shape": [4, 1],
                "data": list(rows["color"].ravel()),
            },
            {"name": "size", "datatype": "BYTES", "shape": [4, 1], "data": rows["size"].tolist()},
        ]
    }
    assert np.isnan(rows["features"]).any()
    request = urllib.request.Request(
        f"{server.http_url}/v2/models/raw/infer", json.dumps(body).encode()
    )
    with urllib.request.urlopen(request) as answer:
        outputs = {o["name"]: o for o in json.loads(answer.read())["outputs"]}
    expected = onnx_outputs(repository, "raw", rows)
    got = np.array(outputs["probabilities"]["data"], np.float32).reshape(4, 3)
    np.testing.assert_allclose(got, expected["probabilities"], rtol=1e-6, atol=1e-6)


def _save_requests(path: Path, requests: dict[str, dict[str, np.ndarray]]) -> None:
    """npz keyed "REQUEST/INPUT"; strings as numpy str (no pickle): the check scripts' format."""
    arrays = {
        f"{key}/{name}": x.astype(str) if x.dtype == object else x
        for key, rows in requests.items()
        for name, x in rows.items()
    }
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    ("script", "mode"),
    [
        ("triton_check.py", None),
        ("triton_http_check.py", "json"),
        ("triton_http_check.py", "binary"),
    ],
)
def test_tritonclient_sends_bytes_unchanged(server, repository, tmp_path, script, mode):
    requests = {str(n): _rows(n, n) for n in (1, 5, 64)}
    if mode == "json":  # tritonclient writes NaN as a bare NaN, which is not JSON
        for rows in requests.values():
            rows["features"] = np.nan_to_num(rows["features"])
    _save_requests(tmp_path / "in.npz", requests)
    url = server.url if mode is None else server.http_url
    args = [str(tmp_path / "in.npz"), str(tmp_path / "out.npz"), *([mode] if mode else [])]
    run_triton_check(script, url, "infer-inputs", "raw", *args)
    with np.load(tmp_path / "out.npz") as outputs:
        for key, rows in requests.items():
            got = {name: outputs[f"{key}/{name}"] for name in ("logits", "probabilities")}
            _same(got, onnx_outputs(repository, "raw", rows))


def test_a_numeric_model_beside_it_is_unchanged(server):
    x = np.random.default_rng(5).normal(size=(3, 8)).astype(np.float32)
    with InferenceClient(server.url) as client:
        assert client.infer("clf", x)["probabilities"].shape == (3, 3)
        with pytest.raises(InvalidInputError, match="'raw' has inputs features, color, size"):
            client.infer("raw", x)
        with pytest.raises(InferenceServerError, match="missing input 'color' \\(BYTES"):
            client.infer("raw", {"features": x[:, :3]})


# -- `bnmodel infer` on a CSV of raw rows ------------------------------------------------------


def _csv(path: Path, rows: dict[str, np.ndarray], blanks: bool = True) -> Path:
    """The rows as a training-like CSV: columns shuffled, an extra id and a string target; NaN
    written as blank, "NA" or "nan" in turn."""
    spellings = ["", "NA", "nan"] if blanks else ["nan"]
    header = ["id", "size", *RAW_NUMERIC[::-1], "target", "color"]
    lines = [",".join(header)]
    for i in range(len(rows["features"])):
        numbers = rows["features"][i]
        cells = [repr(float(v)) if v == v else spellings[i % len(spellings)] for v in numbers]
        color = rows["color"][i, 0]
        quoted = f'"{color}"' if "," in color else color
        lines.append(",".join([str(i), rows["size"][i, 0], *cells[::-1], "yes", quoted]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("http", [False, True], ids=["grpc", "http"])
def test_infer_reads_raw_rows_by_column_name(server, repository, tmp_path, http):
    rows = _rows(150, 7)  # three requests of at most 64 rows
    rows["color"][0, 0] = "red, or so"  # a quoted cell with a comma
    assert np.isnan(rows["features"]).any() and (rows["size"] == "").any()
    url = server.http_url if http else server.url
    predictions = predict_file(url, "raw", _csv(tmp_path / "rows.csv", rows))
    expected = onnx_outputs(repository, "raw", rows)["probabilities"]
    np.testing.assert_allclose(predictions.values, expected, rtol=1e-6, atol=1e-6)
    assert predictions.classes[3] in ("setosa", "versicolor", "virginica")


def _infer(server, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bnmodel", "infer", "--url", server.url, "--model", "raw"]
        + ["--input", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_infer_names_the_file_column_and_row_at_fault(server, tmp_path):
    good = _csv(tmp_path / "good.csv", _rows(3, 8), blanks=False)
    text = good.read_text().splitlines()
    no_color = tmp_path / "no_color.csv"
    no_color.write_text("\n".join(t.rsplit(",", 1)[0] for t in text) + "\n")
    assert _error(_infer(server, no_color)) == (
        f"bnmodel infer: error: input {no_color}: column(s) ['color'] missing; needed: "
        "['age', 'income', 'score', 'color', 'size']"
    )
    word = tmp_path / "word.csv"
    cells = text[2].split(",")
    cells[2] = "lots"  # column score (the header is reversed), data row 2, line 3
    word.write_text("\n".join([*text[:2], ",".join(cells), *text[3:]]) + "\n")
    assert _error(_infer(server, word)) == (
        f"bnmodel infer: error: input {word}: column 'score', row 2 (line 3): "
        "'lots' is not a number"
    )
    npy = tmp_path / "rows.npy"
    np.save(npy, np.zeros((2, 3), np.float32))
    assert "the model has categorical columns ['color', 'size']; give a CSV" in _error(
        _infer(server, npy)
    )
    headless = tmp_path / "headless.csv"
    headless.write_text("1,2,3,red,S\n")
    assert "the first row is no header naming the columns (age, income, score, " in (
        _error(_infer(server, headless))
    )


def test_a_raw_row_onnx_file_serves_without_a_config(repository, tmp_path):
    rows = _rows(5, 9)
    path = repository / "raw" / "1" / "model.onnx"
    with run_server("--model", str(path), "--model-name", "solo") as server:
        with InferenceClient(server.url) as client:
            config = client.model_config("solo")
            got = client.infer("solo", rows)
        predictions = predict_file(server.url, "solo", _csv(tmp_path / "rows.csv", rows))
    assert [(t.name, t.data_type) for t in config.input] == [
        ("features", 11),
        ("color", 13),
        ("size", 13),
    ]
    assert json.loads(config.parameters["categorical_columns"].string_value) == ["color", "size"]
    _same(got, onnx_outputs(repository, "raw", rows))
    np.testing.assert_allclose(predictions.values, got["probabilities"], rtol=1e-6)


def test_a_string_output_comes_back_over_grpc_and_http(tmp_path):
    """BYTES outputs are not part of the raw-row contract, but a graph with one is served."""
    from models import write_model
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    config = (
        'name: "echo"\nmax_batch_size: 8\n'
        'input [{ name: "text" data_type: TYPE_STRING dims: [ 1 ] }]\n'
        'output [{ name: "echo" data_type: TYPE_STRING dims: [ 1 ] }]\n'
    )
    write_model(tmp_path, "echo", model, config)
    words = np.array([["bl\u00fc"], [""], ["x"]], dtype=object)
    body = {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [3, 1], "data": ["a", "b", ""]}]
    }
    with run_server("--model-repository", str(tmp_path)) as server:
        with InferenceClient(server.url) as client:
            grpc_echo = client.infer("echo", {"text": words})["echo"]
        with HttpInferenceClient(server.http_url) as client:
            http_echo = client.infer("echo", {"text": words})["echo"]
        request = urllib.request.Request(
            f"{server.http_url}/v2/models/echo/infer", json.dumps(body).encode()
        )
        with urllib.request.urlopen(request) as answer:
            (output,) = json.loads(answer.read())["outputs"]
    assert grpc_echo.tolist() == http_echo.tolist() == words.tolist()
    assert output == {"name": "echo", "datatype": "BYTES", "shape": [3, 1], "data": ["a", "b", ""]}
