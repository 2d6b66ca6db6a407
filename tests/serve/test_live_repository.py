"""A live repository: several models and versions, version policies, load and unload under
traffic without losing a request, and a broken model that fails alone."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from bnmodel.serve.client import InferenceClient, InferenceServerError
from bnmodel.serve.proto import grpc_service_pb2 as pb
from bnmodel.serve.proto import grpc_service_pb2_grpc as pb_grpc
from conftest import run_server
from models import FEATURES, config_text, mlp_model, write_model

LATEST_ONE = "version_policy: { latest: { num_versions: 1 } }"


def _config(name: str, policy: str, **kwargs) -> str:
    return config_text(name, **kwargs).replace(LATEST_ONE, policy)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    policies = {
        "multi": ("version_policy: { latest: { num_versions: 2 } }", (1, 2, 3)),
        "every": ("version_policy: { all: {} }", (1, 2)),
        "pinned": ("version_policy: { specific: { versions: [1] } }", (1, 2, 3)),
    }
    for name, (policy, versions) in policies.items():
        for v in versions:
            write_model(root, name, mlp_model(seed=10 * v), _config(name, policy), version=v)
    slow = mlp_model(hidden=512, repeat=700, seed=4)  # ~3 s for 512 rows on one core
    write_model(root, "slowpoke", slow, config_text("slowpoke", max_batch_size=512))
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "config.pbtxt").write_text(config_text("corrupt"))
    (root / "corrupt" / "1" / "model.onnx").write_bytes(b"\x08\x07 not an onnx model")
    mismatch = config_text("mismatch").replace(f"dims: [ {FEATURES} ]", "dims: [ 5 ]")
    write_model(root, "mismatch", mlp_model(), mismatch)
    with run_server("--model-repository", str(root), "--allow-model-control") as running:
        yield running, root


def _infer(stub, model: str, version: str = "", rows: int = 1) -> pb.ModelInferResponse:
    x = np.ones((rows, FEATURES), np.float32)
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="features", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return stub.ModelInfer(request, timeout=60)


@pytest.fixture
def stub(live):
    with grpc.insecure_channel(live[0].url) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_versions_follow_each_policy_and_the_latest_answers_when_none_is_named(live, stub):
    with InferenceClient(live[0].url) as client:
        index = client.repository_index()
    ready = {}
    for name, version, state, _ in index:
        if state == "READY":
            ready.setdefault(name, []).append(version)
    assert ready["multi"] == ["2", "3"] and ready["every"] == ["1", "2"]
    assert ready["pinned"] == ["1"]
    assert _infer(stub, "multi").model_version == "3"
    assert _infer(stub, "every").model_version == "2"
    assert _infer(stub, "every", "1").model_version == "1"
    with pytest.raises(grpc.RpcError) as info:
        _infer(stub, "multi", "1")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "versions served: 2, 3" in str(
        info.value.details()
    )


def test_broken_models_fail_alone_with_their_reason(live, stub):
    server, _ = live
    with InferenceClient(server.url) as client:
        reasons = {name: reason for name, _, _, reason in client.repository_index()}
        with pytest.raises(InferenceServerError) as corrupt:
            client.load_model("corrupt")
        with pytest.raises(InferenceServerError) as mismatch:
            client.load_model("mismatch")
    assert corrupt.value.code == mismatch.value.code == "FAILED_PRECONDITION"
    assert "model.onnx could not be loaded" in corrupt.value.message
    assert "[-1, 5] in config.pbtxt" in mismatch.value.message
    assert "could not be loaded" in reasons["corrupt"] and "[-1, 5]" in reasons["mismatch"]
    assert _infer(stub, "multi").model_version == "3"  # the others keep serving


class Traffic:
    """Threads sending requests to one model until stopped; every outcome is kept."""

    def __init__(self, stub, model: str, threads: int = 4) -> None:
        self.stub, self.model = stub, model
        self.versions: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(threads)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.versions.append(_infer(self.stub, self.model, rows=3).model_version)
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


def test_loading_a_new_version_under_traffic_loses_no_request(live, stub):
    server, root = live
    with InferenceClient(server.url, timeout=60) as client, Traffic(stub, "multi") as traffic:
        while len(traffic.versions) < 20:
            time.sleep(0.01)
        write_model(root, "multi", mlp_model(seed=40), (root / "multi/config.pbtxt").read_text(), 4)
        client.load_model("multi")
        seen = len(traffic.versions)
        while len(traffic.versions) < seen + 20:
            time.sleep(0.01)
    assert traffic.errors == []
    assert {"3", "4"} <= set(traffic.versions)
    assert _infer(stub, "multi").model_version == "4"
    with pytest.raises(grpc.RpcError) as retired:  # policy latest 2: now versions 3 and 4
        _infer(stub, "multi", "2")
    assert retired.value.code() == grpc.StatusCode.NOT_FOUND


def _until_dispatched(client: InferenceClient, model: str, count: int) -> None:
    """Until ``count`` requests of ``model`` have started (queue statistics are recorded when a
    request's batch starts)."""
    deadline = time.monotonic() + 30
    while client.model_statistics(model).model_stats[0].inference_stats.queue.count < count:
        assert time.monotonic() < deadline, f"no {model} request started within 30 s"
        time.sleep(0.005)


def test_unload_waits_for_the_requests_in_flight_then_new_ones_are_refused(live, stub):
    server, _ = live
    outcome: dict[str, object] = {}

    def big_request() -> None:
        try:
            outcome["rows"] = _infer(stub, "slowpoke", rows=512).outputs[0].shape[0]
        except grpc.RpcError as exc:
            outcome["error"] = exc.code().name
        outcome["done_at"] = time.monotonic()

    worker = threading.Thread(target=big_request)
    with InferenceClient(server.url, timeout=60) as client:
        worker.start()
        _until_dispatched(client, "slowpoke", 1)  # the 512-row run has started
        client.unload_model("slowpoke")
        unloaded_at = time.monotonic()
        worker.join()
        assert outcome.get("rows") == 512, outcome
        # Answered (give or take delivery) before unload returned, not seconds after it.
        assert outcome["done_at"] < unloaded_at + 1.0
        with pytest.raises(InferenceServerError) as gone:
            client.infer("slowpoke", np.ones((1, FEATURES), np.float32))
        assert gone.value.code == "NOT_FOUND"
        client.load_model("slowpoke")
        assert client.model_ready("slowpoke")
