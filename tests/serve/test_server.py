"""End to end through a real `bnmodel serve` process: tritonclient, our client, raw bytes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from bnmodel.serve.client import InferenceClient, InferenceServerError
from bnmodel.serve.proto import grpc_service_pb2 as pb
from conftest import onnx_outputs, run_triton_check
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

METHOD = "/inference.GRPCInferenceService/"


@pytest.mark.parametrize(("model", "dtype"), [("clf", np.float32), ("half", np.float16)])
def test_tritonclient_matches_onnxruntime(server, repository, tmp_path, model, dtype):
    rng = np.random.default_rng(0)
    batches = {str(n): rng.normal(size=(n, 8)).astype(dtype) for n in (1, 7, 64)}
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
    for n, x in batches.items():
        for name, expected in onnx_outputs(repository, model, x).items():
            got = outputs[f"{n}/{name}"]
            assert got.dtype == expected.dtype and got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_typed_and_raw_inputs_give_the_same_answer(server, repository):
    x = np.random.default_rng(1).normal(size=(7, 8)).astype(np.float32)
    with InferenceClient(server.url) as client:
        raw = client.infer("reg", x, raw=True)["predictions"]
        typed = client.infer("reg", x, raw=False)["predictions"]
    np.testing.assert_array_equal(raw, typed)
    np.testing.assert_allclose(raw, onnx_outputs(repository, "reg", x)["predictions"], rtol=1e-6)


def test_tritonclient_control_plane(server):
    result = run_triton_check("triton_check.py", server.url, "control", "clf")
    assert result["live"] and result["ready"] and result["model_ready"]
    assert result["server"]["name"] == "bnmodel"
    assert "model_repository" in result["server"]["extensions"]
    assert result["metadata"]["inputs"] == [
        {"name": "features", "datatype": "FP32", "shape": ["-1", "8"]}
    ]
    assert [o["name"] for o in result["metadata"]["outputs"]] == ["logits", "probabilities"]
    assert result["config"]["max_batch_size"] == 64
    assert result["config"]["input"][0]["dims"] == ["8"]
    assert "class_labels" in result["config"]["parameters"]
    assert result["index"] == ["clf", "half", "raw", "reg"]
    assert result["ready_after_unload"] is False and result["ready_after_load"] is True
    assert result["missing_model_status"] == "StatusCode.NOT_FOUND"


def test_health_and_reflection(server):
    with grpc.insecure_channel(server.url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
        services = {s.name for s in answer.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services


def _raw_call(url: str, method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(url) as channel:
        call = channel.unary_unary(METHOD + method)  # bytes in, bytes out
        try:
            call(payload, timeout=10)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


def _bad_requests() -> list[tuple[str, pb.ModelInferRequest | bytes, grpc.StatusCode, str]]:
    x = np.ones((2, 8), np.float32)

    def request(
        model="clf",
        name="features",
        datatype="FP32",
        shape=(2, 8),
        raw=None,
        typed=None,
        outputs=(),
    ):
        r = pb.ModelInferRequest(model_name=model)
        tensor = r.inputs.add(name=name, datatype=datatype, shape=shape)
        if typed is not None:
            tensor.contents.fp32_contents.extend(typed)
        r.raw_input_contents.extend((x.tobytes(),) if raw is None else raw)
        for o in outputs:
            r.outputs.add(name=o)
        return r

    duplicate = request()
    duplicate.inputs.add(name="features", datatype="FP32", shape=(2, 8))
    duplicate.raw_input_contents.append(x.tobytes())
    extra = request()
    extra.inputs.add(name="extra", datatype="FP32", shape=(2, 8))
    extra.raw_input_contents.append(x.tobytes())
    invalid, notfound = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    return [
        (
            "unknown model",
            request(model="nope"),
            notfound,
            "Request for unknown model: 'nope' is not found",
        ),
        (
            "unknown version",
            pb.ModelInferRequest(model_name="clf", model_version="9"),
            notfound,
            "model 'clf' has no version '9'",
        ),
        (
            "missing input",
            pb.ModelInferRequest(model_name="clf"),
            invalid,
            "model 'clf': missing input 'features'",
        ),
        ("extra input", extra, invalid, "unknown input 'extra'"),
        ("duplicate input", duplicate, invalid, "input 'features' appears 2 times"),
        ("wrong datatype", request(datatype="INT32"), invalid, "datatype 'INT32', expected FP32"),
        ("wrong rank", request(shape=(16,)), invalid, "shape [16], expected [-1, 8]"),
        ("wrong features", request(shape=(4, 4)), invalid, "shape [4, 4], expected [-1, 8]"),
        ("raw size", request(raw=(x.tobytes()[:-4],)), invalid, "60 bytes, expected 64"),
        (
            "batch too big",
            request(shape=(65, 8), raw=(b"\0" * 65 * 32,)),
            invalid,
            "batch size 65 exceeds max_batch_size 64",
        ),
        (
            "raw and typed",
            request(typed=[1.0] * 16),
            invalid,
            "both raw_input_contents and typed contents",
        ),
        ("unknown output", request(outputs=("nope",)), invalid, "unknown output 'nope'"),
        ("undecodable", b"\x0a\xff\xff", invalid, "not a valid ModelInferRequest"),
    ]


BAD = _bad_requests()


@pytest.mark.parametrize(("label", "request_", "code", "message"), BAD, ids=[b[0] for b in BAD])
def test_each_bad_request_gets_its_status_then_a_good_one_succeeds(
    server, label, request_, code, message
):
    payload = request_ if isinstance(request_, bytes) else request_.SerializeToString()
    got_code, details = _raw_call(server.url, "ModelInfer", payload)
    assert got_code == code, details
    assert message in details
    assert "Traceback" not in details and "numpy" not in details
    with InferenceClient(server.url) as client:
        assert client.infer("clf", np.ones((1, 8), np.float32))["probabilities"].shape == (1, 3)


def test_unimplemented_rpcs_and_undecodable_control_requests(server):
    code, details = _raw_call(server.url, "TraceSetting", b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED and "TraceSetting" in details
    code, details = _raw_call(server.url, "ModelMetadata", b"\x0a\x05ab")  # truncated string
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "ModelMetadataRequest" in details


def test_client_errors_carry_status_and_message(server):
    with InferenceClient(server.url, timeout=5) as client:
        with pytest.raises(InferenceServerError) as info:
            client.infer("clf", {"features": np.ones((1, 3), np.float32)})
        assert info.value.code == "INVALID_ARGUMENT"
        assert "expected [-1, 8]" in info.value.message
    with (
        InferenceClient("127.0.0.1:1", timeout=1) as client,
        pytest.raises(InferenceServerError) as info,
    ):
        client.server_live()
    assert info.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
