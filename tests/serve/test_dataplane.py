"""The data plane in-process (no gRPC): loading, validation of every bad request, inference."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from bnmodel.serve.dataplane import DataPlane
from bnmodel.serve.errors import InvalidInputError, ModelLoadError, ModelNotFoundError
from bnmodel.serve.proto import grpc_service_pb2 as pb
from bnmodel.serve.repository import ModelRepository
from bnmodel.serve.session import SessionFactory
from bnmodel.serve.validation import InferInput, InferRequest
from models import config_text, fixed_config, fixed_model, mlp_model, write_model


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    write_model(root, "clf", mlp_model(), config_text("clf"))
    # A model whose graph does not match its config (config says 9 features).
    write_model(root, "mismatch", mlp_model(), config_text("mismatch").replace("[ 8 ]", "[ 9 ]"))
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "config.pbtxt").write_text(config_text("corrupt"))
    (root / "corrupt" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    executor = ThreadPoolExecutor(2)
    plane = DataPlane(ModelRepository(root), SessionFactory("cpu", 1), executor)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(plane.load_all())
    yield plane, loop, root
    loop.close()
    executor.shutdown()


def _request(rows=2, name="features", datatype="FP32", shape=None, **kw) -> InferRequest:
    x = np.ones((rows, 8), np.float32)
    shape = shape if shape is not None else x.shape
    raw = kw.pop("raw", x.tobytes())
    kw.setdefault("raw_count", 1)
    return InferRequest("clf", inputs=(InferInput(name, datatype, tuple(shape), raw=raw),), **kw)


def test_bad_models_fail_alone_with_clear_reasons(plane):
    plane, _, _ = plane
    states = {e.name: (e.state, e.reason) for e in plane.index()}
    assert states["clf"] == ("READY", "")
    assert states["mismatch"][0] == "UNAVAILABLE" and "[-1, 9]" in states["mismatch"][1]
    assert "could not be loaded by ONNX Runtime" in states["corrupt"][1]
    assert "Fail" not in states["corrupt"][1]  # no ORT text in what clients see
    with pytest.raises(ModelNotFoundError, match="'corrupt' is not loaded"):
        plane.model("corrupt")


def test_infer_matches_onnxruntime(plane):
    plane, loop, root = plane
    x = np.random.default_rng(0).normal(size=(7, 8)).astype(np.float32)
    response = loop.run_until_complete(plane.infer(_request(7, raw=x.tobytes(), id="req-1")))
    expected = ort.InferenceSession(str(root / "clf" / "1" / "model.onnx")).run(
        None, {"features": x}
    )
    assert response.id == "req-1" and response.model_version == "1"
    assert [name for name, _ in response.outputs] == ["logits", "probabilities"]
    np.testing.assert_allclose(response.outputs[0][1], expected[0], rtol=1e-6)
    assert plane.statistics("clf")[0][2].inference_count >= 7


BAD = [
    (dict(name="x"), "unknown input 'x'; expected inputs: 'features'"),
    (dict(datatype="FP64"), "datatype 'FP64', expected FP32"),
    (dict(shape=(2, 7)), "shape [2, 7], expected [-1, 8]"),
    (dict(shape=(2, 8, 1)), "shape [2, 8, 1], expected [-1, 8]"),
    (dict(shape=(-2, 8)), "negative dimension"),
    (dict(rows=65), "batch size 65 exceeds max_batch_size 64"),
    (dict(rows=0), "batch size 0"),
    (dict(raw=b"\0" * 63), "63 bytes, expected 64"),
    (dict(outputs=("nope",)), "unknown output 'nope'"),
    (dict(outputs=("logits", "logits")), "output 'logits' requested 2 times"),
    (dict(raw_count=2), "2 raw_input_contents for 1 input(s)"),
]


@pytest.mark.parametrize(("change", "message"), BAD)
def test_each_bad_request_names_model_tensor_expected_received(plane, change, message):
    plane, loop, _ = plane
    with pytest.raises(InvalidInputError) as info:
        loop.run_until_complete(plane.infer(_request(**change)))
    assert message in str(info.value)
    assert "model 'clf'" in str(info.value)
    # ... and the next good request is served.
    assert loop.run_until_complete(plane.infer(_request())).outputs


def test_missing_duplicate_and_mixed_inputs(plane):
    plane, loop, _ = plane
    x = np.ones((1, 8), np.float32)
    one = InferInput("features", "FP32", (1, 8), raw=x.tobytes())
    cases = [
        (InferRequest("clf"), "missing input 'features' (FP32 [-1, 8])"),
        (InferRequest("clf", inputs=(one, one), raw_count=2), "'features' appears 2 times"),
        (
            InferRequest(
                "clf",
                inputs=(InferInput("features", "FP32", (1, 8), contents=pb.InferTensorContents()),),
                raw_count=1,
            ),
            "both raw_input_contents and typed contents",
        ),
        (InferRequest("clf", inputs=(InferInput("features", "FP32", (1, 8)),)), "no data"),
    ]
    for request, message in cases:
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            loop.run_until_complete(plane.infer(request))


def test_unknown_model_and_version(plane):
    plane, loop, _ = plane
    with pytest.raises(
        ModelNotFoundError, match="unknown model: 'nope' is not found; loaded models: 'clf'"
    ):
        loop.run_until_complete(plane.infer(InferRequest("nope")))
    with pytest.raises(ModelNotFoundError, match="no version '7'; versions served: 1"):
        loop.run_until_complete(plane.infer(InferRequest("clf", model_version="7")))
    with pytest.raises(InvalidInputError, match="model name is empty"):
        loop.run_until_complete(plane.infer(InferRequest("")))


def test_reload_and_unload(plane):
    plane, loop, _ = plane
    before = plane.models["clf"]
    loop.run_until_complete(plane.load("clf"))
    assert plane.models["clf"] is not before  # swapped for a fresh one
    with pytest.raises(ModelLoadError):
        loop.run_until_complete(plane.load("corrupt"))
    assert plane.model_ready("clf")
    loop.run_until_complete(plane.unload("clf"))
    assert not plane.model_ready("clf")
    loop.run_until_complete(plane.load("clf"))
    assert plane.model_ready("clf", "1") and not plane.model_ready("clf", "2")


def test_an_unload_waits_for_a_load_in_flight_which_cannot_bring_the_model_back(plane):
    plane, loop, _ = plane

    async def load_then_unload():
        loading = asyncio.create_task(plane.load("clf"))
        await asyncio.sleep(0)  # the load holds the model's lock, its sessions on a thread
        await plane.unload("clf")
        await loading

    loop.run_until_complete(load_then_unload())
    assert not plane.model_ready("clf")
    loop.run_until_complete(plane.load("clf"))
    assert plane.model_ready("clf")


def test_names_that_are_not_models_leave_no_lock_behind(plane):
    plane, loop, _ = plane
    for name in ("nope", "x" * 100, "../clf"):
        with pytest.raises(ModelNotFoundError):
            loop.run_until_complete(plane.load(name))
        with pytest.raises(ModelNotFoundError):
            loop.run_until_complete(plane.unload(name))
    assert set(plane._load_locks) <= {"clf", "mismatch", "corrupt"}


def test_a_batchless_model_runs_requests_of_its_full_shape(tmp_path):
    write_model(tmp_path, "fixed", fixed_model(), fixed_config("fixed"))
    executor = ThreadPoolExecutor(1)
    plane = DataPlane(ModelRepository(tmp_path), SessionFactory("cpu", 1), executor)
    x = np.arange(8, dtype=np.float32)
    request = InferRequest(
        "fixed", inputs=(InferInput("features", "FP32", (8,), raw=x.tobytes()),), raw_count=1
    )

    async def main():
        await plane.load_all()
        return await plane.infer(request)

    outputs = dict(asyncio.run(main()).outputs)
    executor.shutdown()
    session = ort.InferenceSession(str(tmp_path / "fixed" / "1" / "model.onnx"))
    np.testing.assert_allclose(outputs["logits"], session.run(["logits"], {"features": x})[0])
    assert outputs["probabilities"].shape == (3,)
