"""A small synchronous client for the Open Inference Protocol over gRPC: numpy in, numpy out.

Works with this server and with any other server of the protocol (Triton, KServe).

    with InferenceClient("127.0.0.1:8001") as client:
        probabilities = client.infer("digits", rows)["probabilities"]   # rows: float32 [N, 64]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from .codec import decode_raw, decode_typed, encode_raw, encode_typed
from .errors import InvalidInputError
from .proto import grpc_service_pb2 as pb
from .proto import grpc_service_pb2_grpc as pb_grpc
from .proto import model_config_pb2
from .security import TLSFiles, bearer_metadata, channel_credentials
from .settings import DEFAULT_GRPC_PORT

__all__ = ["InferenceServerError", "TensorInfo", "ModelInfo", "InferenceClient"]

_MAX_MESSAGE = 1 << 30  # the server enforces its own limit; the client does not add one
# UNAVAILABLE (a draining server, a model being reloaded, no connection yet) is retried by
# gRPC itself with backoff: such a request was never run, so running it later is safe.
_RETRY_UNAVAILABLE = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "inference.GRPCInferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
# gRPC's own words when nothing answers at the address (connect, DNS, TLS handshake).
_UNREACHABLE = ("failed to connect", "dns resolution", "connection refused", "socket closed")


class InferenceServerError(Exception):
    """A failed call: ``code`` is the gRPC status name ("NOT_FOUND"), ``message`` the reason."""

    def __init__(self, method: str, code: str, message: str) -> None:
        super().__init__(f"{method}: {code}: {message}")
        self.method = method
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: variable (the batch axis)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


def _tensors(metadata) -> tuple[TensorInfo, ...]:
    return tuple(TensorInfo(t.name, t.datatype, tuple(t.shape)) for t in metadata)


def _decode_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    raw = response.raw_output_contents
    outputs = {}
    for i, tensor in enumerate(response.outputs):
        shape = tuple(tensor.shape)
        if i < len(raw):
            outputs[tensor.name] = decode_raw(raw[i], tensor.datatype, shape)
        else:
            outputs[tensor.name] = decode_typed(tensor.contents, tensor.datatype, shape)
    return outputs


def only_input_name(
    cache: dict[tuple[str, str], str],
    model: str,
    version: str,
    input_names: Callable[[], list[str]],
) -> str:
    """The input of a one-input model, for ``infer(model, array)``; looked up (``input_names``:
    a ModelMetadata call) once per model and version, not once per request."""
    key = (model, version)
    if key not in cache:
        names = input_names()
        if len(names) != 1:
            raise InvalidInputError(
                f"model {model!r} has inputs {', '.join(names)}: pass a dict of arrays"
            )
        cache[key] = names[0]
    return cache[key]


class ClosingClient:
    """A context manager that closes the client's connection on exit."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class InferenceClient(ClosingClient):
    """Blocking client; every call takes ``timeout`` seconds at most (default: the client's)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        tls: TLSFiles | None = None,
        auth_token: str | None = None,
    ) -> None:
        """``tls``: connect with TLS (its ca: the CA to trust; cert/key: for mutual TLS).
        ``auth_token``: sent as ``authorization: Bearer <token>`` on every call."""
        if "://" in url:
            raise InvalidInputError(
                f"{url}: expected the gRPC address as HOST:PORT (no scheme; `bnmodel serve` "
                f"listens on 127.0.0.1:{DEFAULT_GRPC_PORT} by default)"
            )
        self.url = url
        self.timeout = timeout
        self._input_names: dict[tuple[str, str], str] = {}  # see only_input_name
        options = [
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
            # One client, one TCP connection of its own (gRPC would share one between clients
            # of the same URL): with --workers N the server balances connections, not calls.
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.service_config", _RETRY_UNAVAILABLE),
        ]
        if tls is not None and tls.enabled:
            self._channel = grpc.secure_channel(url, channel_credentials(tls), options=options)
        else:
            self._channel = grpc.insecure_channel(url, options=options)
        self._auth = bearer_metadata(auth_token)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._metadata: dict[tuple[str, str], ModelInfo] = {}

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request, timeout: float | None):
        try:
            return getattr(self._stub, method)(
                request, timeout=timeout or self.timeout, metadata=self._auth
            )
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            details = (exc.details() or "").strip()
            if code == "UNAVAILABLE" and any(w in details.lower() for w in _UNREACHABLE):
                details = (
                    f"no server answers at {self.url}; is `bnmodel serve` running there "
                    "(and with TLS only if you gave --tls-ca)?"
                )
            elif code == "DEADLINE_EXCEEDED" and not details:
                details = f"no answer from {self.url} within {timeout or self.timeout:g} s"
            else:
                details = f"{details.splitlines()[0] if details else 'no details'} ({self.url})"
            raise InferenceServerError(method, code, details) from None

    # -- health and metadata ------------------------------------------------------------------

    def server_live(self, timeout: float | None = None) -> bool:
        return self._call("ServerLive", pb.ServerLiveRequest(), timeout).live

    def server_ready(self, timeout: float | None = None) -> bool:
        return self._call("ServerReady", pb.ServerReadyRequest(), timeout).ready

    def model_ready(self, name: str, version: str = "", timeout: float | None = None) -> bool:
        request = pb.ModelReadyRequest(name=name, version=version)
        return self._call("ModelReady", request, timeout).ready

    def server_metadata(self, timeout: float | None = None) -> pb.ServerMetadataResponse:
        return self._call("ServerMetadata", pb.ServerMetadataRequest(), timeout)

    def model_metadata(self, name: str, version: str = "", timeout: float | None = None):
        """The model's tensors (cached per model and version)."""
        key = (name, version)
        if key not in self._metadata:
            request = pb.ModelMetadataRequest(name=name, version=version)
            m = self._call("ModelMetadata", request, timeout)
            self._metadata[key] = ModelInfo(
                m.name, tuple(m.versions), m.platform, _tensors(m.inputs), _tensors(m.outputs)
            )
        return self._metadata[key]

    def model_config(
        self, name: str, version: str = "", timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        request = pb.ModelConfigRequest(name=name, version=version)
        return self._call("ModelConfig", request, timeout).config

    # -- repository -----------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False, timeout: float | None = None):
        """[(name, version, state, reason)] for every model of the repository."""
        request = pb.RepositoryIndexRequest(ready=ready_only)
        response = self._call("RepositoryIndex", request, timeout)
        return [(m.name, m.version, m.state, m.reason) for m in response.models]

    def model_statistics(
        self, name: str = "", version: str = "", timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """Triton's ModelStatistics: every loaded version, or ``name`` [``version``]."""
        request = pb.ModelStatisticsRequest(name=name, version=version)
        return self._call("ModelStatistics", request, timeout)

    def load_model(self, name: str, timeout: float | None = None) -> None:
        self._call("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=name), timeout)
        self._metadata = {k: v for k, v in self._metadata.items() if k[0] != name}

    def unload_model(self, name: str, timeout: float | None = None) -> None:
        request = pb.RepositoryModelUnloadRequest(model_name=name)
        self._call("RepositoryModelUnload", request, timeout)
        self._metadata = {k: v for k, v in self._metadata.items() if k[0] != name}

    # -- inference ------------------------------------------------------------------------

    def _named(self, model: str, version: str, inputs) -> Mapping[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            return inputs
        name = only_input_name(
            self._input_names,
            model,
            version,
            lambda: [t.name for t in self.model_metadata(model, version).inputs],
        )
        return {name: np.asarray(inputs)}

    def build_request(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] = (),
        version: str = "",
        request_id: str = "",
        raw: bool = True,
    ) -> pb.ModelInferRequest:
        """The ModelInferRequest for ``inputs``: raw_input_contents, or typed contents."""
        request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
        for name, array in inputs.items():
            array = np.asarray(array)
            tensor = request.inputs.add(name=name, shape=array.shape)
            if raw:
                datatype, data = encode_raw(array)
                request.raw_input_contents.append(data)
            else:
                datatype = encode_typed(array, tensor.contents)
            tensor.datatype = datatype.name
        for name in outputs:
            request.outputs.add(name=name)
        return request

    def infer(
        self,
        model: str,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] = (),
        version: str = "",
        request_id: str = "",
        raw: bool = True,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` (one array for a one-input model, or {name: array}).

        Returns {output name: array}; ``outputs`` limits which ones (default: all).
        """
        request = self.build_request(
            model,
            self._named(model, version, inputs),
            outputs=outputs,
            version=version,
            request_id=request_id,
            raw=raw,
        )
        return _decode_outputs(self._call("ModelInfer", request, timeout))
