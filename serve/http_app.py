"""The Open Inference Protocol's HTTP routes: one complete request in, one response out.

Each route is convert, delegate, convert, as in the gRPC servicer (serve/servicer.py), with no
framework: a framework's routing and validation cost more per request than a small batch's
model run (docs/benchmarks.md). Everything past the bytes is shared with gRPC: data plane, drain
gate, token check, model-control switch. Domain errors get their HTTP status from
serve/errors.py's table and gRPC's message, as ``{"error": "..."}``; anything unexpected is a
500 whose details go only to the log. serve/http.py carries the bytes.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from .dataplane import DataPlane
from .errors import InvalidInputError, ServeError, status_for
from .http_codec import (
    HEADER_LENGTH,
    binary_outputs,
    decode_infer_request,
    encode_infer_response,
    json_object,
)
from .repository import check_model_name, load_override
from .security import LogLimiter, model_control_refusal, token_matches
from .shared_memory import NO_CUDA_SHARED_MEMORY
from .shutdown import DrainGate
from .statistics import version_statistics

__all__ = ["HttpApp", "HttpRequest", "HttpResponse", "error_response"]

log = logging.getLogger("bnmodel.serve")
_rejections = LogLimiter(log)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def _json(document: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(document))


def error_response(
    status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> HttpResponse:
    return HttpResponse(status, orjson.dumps({"error": message}), headers=headers)


_EMPTY_OK = HttpResponse(200, b"")


def _cuda_shared_memory_call(action: str, region: str) -> Callable[[Any], HttpResponse]:
    """CUDA shared memory: none can be registered; status lists none, unregister does nothing."""
    if action == "status":
        return lambda r: _json(NO_CUDA_SHARED_MEMORY.status(region))
    if action == "unregister":
        return lambda r: NO_CUDA_SHARED_MEMORY.unregister(region) or _EMPTY_OK
    return lambda r: NO_CUDA_SHARED_MEMORY.register(region)


_NOT_READY = HttpResponse(400, b"")  # Triton answers a not-ready probe with 400 and no body


_INT64_TYPES = frozenset(
    (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    )
)


def _proto_json(message) -> dict:
    """A protobuf message as Triton's HTTP JSON: field names as in the .proto, 64-bit integers
    as numbers (proto3 JSON writes them as strings)."""
    document = json_format.MessageToDict(message, preserving_proto_field_name=True)
    _int64_as_numbers(message.DESCRIPTOR, document)
    return document


def _int64_as_numbers(descriptor, document: dict) -> None:
    for entry in descriptor.fields:
        value = document.get(entry.name)
        if value is None:
            continue
        kind = entry.message_type
        if kind is not None and kind.GetOptions().map_entry:
            mapped = kind.fields_by_name["value"]
            if mapped.message_type is not None:
                for item in value.values():
                    _int64_as_numbers(mapped.message_type, item)
        elif kind is not None:
            for item in value if isinstance(value, list) else [value]:
                _int64_as_numbers(kind, item)
        elif entry.type in _INT64_TYPES:
            document[entry.name] = (
                [int(v) for v in value] if isinstance(value, list) else int(value)
            )


@dataclass
class HttpRequest:
    method: str = ""
    url: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes | bytearray = b""
    keep_alive: bool = True


# /v2/models/{name}[/versions/{version}][/{action}]: names are percent-decoded afterwards.
_MODEL_ROUTE = re.compile(
    r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer|config|stats))?$"
)
_REPOSITORY_ROUTE = re.compile(r"^/v2/repository/models/([^/]+)/(load|unload)$")
# /v2/{system,cuda}sharedmemory[/region/{name}]/{register,unregister,status}
_SHM_ROUTE = re.compile(
    r"^/v2/(system|cuda)sharedmemory(?:/region/([^/]+))?/(register|unregister|status)$"
)


class HttpApp:
    """Routes one complete request to the data plane; returns a response or an awaitable one."""

    def __init__(
        self,
        dataplane: DataPlane,
        gate: DrainGate | None = None,
        *,
        token: str | None = None,
        allow_model_control: bool = False,
    ) -> None:
        self.dataplane = dataplane
        self.gate = gate
        self.token = token
        self.allow_model_control = allow_model_control

    def handle(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        path = request.url.split(b"?", 1)[0].decode("latin-1")
        if path.startswith("/v2/health/"):  # open to probes, never counted by the drain
            return self._health(request.method, path)
        route = self._route(request.method, path)
        if isinstance(route, HttpResponse):
            return route
        name, call = route
        if self.token is not None:
            values = [("authorization", request.headers.get("authorization", ""))]
            if not token_matches(values, self.token):
                message = (
                    f"{name} needs the header 'Authorization: Bearer <token>' "
                    "with this server's token"
                )
                _rejections.warning("HTTP %s refused: 401: %s", name, message)
                return error_response(401, message, (("www-authenticate", "Bearer"),))
        if self.gate is not None and (refusal := self.gate.admit()):
            # Draining: 503, as UNAVAILABLE over gRPC; at --max-concurrent-rpcs: 429.
            return error_response(503 if self.gate.draining else 429, refusal)
        try:
            result = call(request)
        except BaseException as exc:
            self._done()
            return self._failure(name, exc)
        if isinstance(result, HttpResponse):
            self._done()
            return result
        return self._awaited(name, result)

    def _done(self) -> None:
        if self.gate is not None:
            self.gate.done()

    async def _awaited(self, name: str, result: Awaitable[HttpResponse]) -> HttpResponse:
        try:
            return await result
        except BaseException as exc:
            return self._failure(name, exc)
        finally:
            self._done()

    @staticmethod
    def _failure(name: str, exc: BaseException) -> HttpResponse:
        if isinstance(exc, ServeError):
            status = status_for(exc).http
            _rejections.warning("HTTP %s rejected: %d: %s", name, status, exc)
            return error_response(status, str(exc))
        if not isinstance(exc, Exception):
            raise exc  # cancellation and exit pass through
        log.exception("HTTP %s failed unexpectedly", name)
        return error_response(
            500, f"internal error while handling {name}; the server log has the details"
        )

    # -- routing ------------------------------------------------------------------------------

    def _health(self, method: str, path: str) -> HttpResponse:
        if path == "/v2/health/live":
            up = True  # answering at all is being live (as gRPC's ServerLive)
        elif path == "/v2/health/ready":
            up = self.dataplane.ready()
        else:
            return error_response(
                404, f"unknown route {path!r}; health routes: /v2/health/live, /v2/health/ready"
            )
        if method not in ("GET", "HEAD"):
            return error_response(405, f"{path} takes GET, not {method}", (("allow", "GET"),))
        return _EMPTY_OK if up else _NOT_READY

    def _route(self, method: str, path: str):
        """(name for logs, handler) or the error response for an unknown route or method."""
        wanted, name, call = "GET", "", None
        if path in ("/v2", "/v2/"):
            name, call = "ServerMetadata", self._server_metadata
        elif path == "/v2/models/stats":
            name, call = "ModelStatistics", lambda r: self._statistics("", "")
        elif path == "/v2/repository/index":
            wanted, name, call = "POST", "RepositoryIndex", self._index
        elif match := _MODEL_ROUTE.match(path):
            model, version = unquote(match[1]), unquote(match[2] or "")
            action = match[3] or "metadata"
            name = {
                "metadata": "ModelMetadata",
                "ready": "ModelReady",
                "infer": "ModelInfer",
                "config": "ModelConfig",
                "stats": "ModelStatistics",
            }[action]
            wanted = "POST" if action == "infer" else "GET"
            call = self._model_call(action, model, version)
        elif match := _REPOSITORY_ROUTE.match(path):
            model, action = unquote(match[1]), match[2]
            wanted, name = (
                "POST",
                "RepositoryModelLoad" if action == "load" else "RepositoryModelUnload",
            )
            call = self._control(action, model)
            if not self.allow_model_control:  # after the token check, as over gRPC
                refusal = error_response(403, model_control_refusal(name))
                call = lambda r: refusal  # noqa: E731
        elif match := _SHM_ROUTE.match(path):
            kind, region, action = match[1], unquote(match[2] or ""), match[3]
            wanted = "GET" if action == "status" else "POST"
            name = f"{kind.capitalize()}SharedMemory{action.capitalize()}"  # the gRPC method
            if kind == "system":
                call = self._shared_memory_call(action, region)
            else:
                call = _cuda_shared_memory_call(action, region)
        else:
            return error_response(
                404,
                f"unknown route {path[:200]!r}; the Open Inference Protocol routes start with "
                "/v2 (GET /v2 gives the server's metadata)",
            )
        if method != wanted and not (wanted == "GET" and method == "HEAD"):
            return error_response(
                405, f"{path[:200]} takes {wanted}, not {method}", (("allow", wanted),)
            )
        return name, call

    def _model_call(self, action: str, model: str, version: str) -> Callable[[HttpRequest], Any]:
        if action == "metadata":
            return lambda r: self._model_metadata(model, version)
        if action == "ready":
            return lambda r: _EMPTY_OK if self.dataplane.model_ready(model, version) else _NOT_READY
        if action == "config":
            return lambda r: _json(_proto_json(self.dataplane.model(model, version)[0].config))
        if action == "stats":
            return lambda r: self._statistics(model, version)
        return lambda r: self._infer(r, model, version)

    def _control(self, action: str, model: str) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
        async def call(request: HttpRequest) -> HttpResponse:
            body = json_object(request.body) if request.body else {}
            if action == "load":
                name = check_model_name(model)
                await self.dataplane.load(name, load_override(name, _load_parameters(name, body)))
            else:
                await self.dataplane.unload(check_model_name(model))
            return _EMPTY_OK

        return call

    def _shared_memory_call(
        self, action: str, region: str
    ) -> Callable[[HttpRequest], HttpResponse]:
        registry = self.dataplane.shared_memory
        if action == "status":
            return lambda r: _json([vars(found) for found in registry.status(region)])
        if action == "unregister":
            return lambda r: registry.unregister(region) or _EMPTY_OK

        def register(request: HttpRequest) -> HttpResponse:
            if not region:
                raise InvalidInputError(
                    "SystemSharedMemoryRegister: the region's name goes in the path, "
                    "/v2/systemsharedmemory/region/NAME/register"
                )
            body = json_object(request.body or b"{}", "register request body")
            where = f"SystemSharedMemoryRegister {region!r}"
            key = body.get("key")
            if not isinstance(key, str):
                raise InvalidInputError(f"{where}: 'key' must be a string")
            numbers = []
            for field_name, default in (("offset", 0), ("byte_size", None)):
                value = body.get(field_name, default)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise InvalidInputError(f"{where}: {field_name!r} must be an integer >= 0")
                numbers.append(value)
            registry.register(region, key, *numbers)
            return _EMPTY_OK

        return register

    # -- handlers: convert, delegate, convert ------------------------------------------------

    def _server_metadata(self, request: HttpRequest) -> HttpResponse:
        meta = self.dataplane.server_metadata()
        return _json(
            {"name": meta.name, "version": meta.version, "extensions": list(meta.extensions)}
        )

    def _model_metadata(self, model_name: str, version: str) -> HttpResponse:
        model, _ = self.dataplane.model(model_name, version)
        signature = model.signature

        def tensors(specs):
            return [
                {"name": s.name, "datatype": s.datatype.name, "shape": signature.shape(s)}
                for s in specs
            ]

        return _json(
            {
                "name": model.name,
                "versions": list(model.versions),
                "platform": model.config.platform,
                "inputs": tensors(signature.inputs),
                "outputs": tensors(signature.outputs),
            }
        )

    def _statistics(self, model: str, version: str) -> HttpResponse:
        entries = self.dataplane.statistics(model, version)
        return _json({"model_stats": [version_statistics(*e) for e in entries]})

    def _index(self, request: HttpRequest) -> HttpResponse:
        ready = False
        if request.body:
            ready = json_object(request.body).get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidInputError("RepositoryIndex: 'ready' must be a boolean")
        entries = self.dataplane.index(ready_only=ready)
        return _json(
            [
                {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
                for e in entries
            ]
        )

    async def _infer(self, request: HttpRequest, model: str, version: str) -> HttpResponse:
        length = request.headers.get(HEADER_LENGTH)
        if length is not None:
            if not length.isdigit():
                raise InvalidInputError(
                    "Inference-Header-Content-Length must be a number of bytes, "
                    f"got {length[:32]!r}"
                )
            length = int(length)
        self.dataplane.model(model, version)  # unknown model: 404 before the body is read
        decoded = decode_infer_request(model, version, request.body, length)
        response = await self.dataplane.infer(decoded)
        body, header_length = encode_infer_response(response, binary_outputs(decoded))
        if header_length is None:
            return HttpResponse(200, body)
        return HttpResponse(
            200, body, "application/octet-stream", ((HEADER_LENGTH, str(header_length)),)
        )


def _load_parameters(name: str, body: dict) -> dict[str, tuple[str, object]]:
    """A load request's JSON "parameters" as {name: (kind, value)}: file: contents are base64."""
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidInputError(f"RepositoryModelLoad {name!r}: 'parameters' must be an object")
    found: dict[str, tuple[str, object]] = {}
    for key, value in parameters.items():
        if key.startswith("file:") and isinstance(value, str):
            try:
                found[key] = ("bytes", base64.b64decode(value, validate=True))
            except binascii.Error:
                raise InvalidInputError(
                    f"RepositoryModelLoad {name!r}: parameter {key[:64]!r} is not base64"
                ) from None
        else:
            kind = {str: "string", bool: "bool", int: "int64"}.get(
                type(value), type(value).__name__
            )
            found[key] = (kind, value)
    return found
