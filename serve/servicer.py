"""gRPC servicer of GRPCInferenceService: protobuf <-> domain, one RPC = convert, delegate, convert.

Every RPC of the service is registered from the service descriptor; the ones this server does not
implement answer UNIMPLEMENTED. ModelInfer is registered without a request deserializer: it gets
the raw request bytes and parses them here, so an undecodable request is answered
INVALID_ARGUMENT by our code (grpcio would answer it with an opaque error); the other RPCs get
their bytes parsed by :func:`_parsed` for the same reason. All errors pass through
:func:`_guarded`, the one place domain errors become status codes; it also counts the RPC in the
drain gate (serve/shutdown.py). Both are done in the handler rather than by gRPC interceptors:
each interceptor costs every request another round of coroutines.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from .batching import set_request_deadline
from .codec import encode_raw
from .dataplane import DataPlane, InferResponse
from .errors import DeadlineExceededError, InvalidInputError, ServeError, status_for
from .proto import grpc_service_pb2 as pb
from .repository import check_model_name, load_override
from .security import MODEL_CONTROL_METHODS, LogLimiter, model_control_refusal
from .shared_memory import NO_CUDA_SHARED_MEMORY
from .shutdown import DrainGate
from .statistics import version_statistics
from .validation import InferInput, InferRequest, Parameter

__all__ = [
    "SERVICE_NAME",
    "InferenceServicer",
    "build_handler",
    "decode_infer_request",
    "encode_infer_response",
]

log = logging.getLogger("bnmodel.serve")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# One line per rejected request, but a flood of bad requests cannot flood the log.
_rejections = LogLimiter(log)


def _parameters(entries) -> tuple[Parameter, ...]:
    """map<string, InferParameter> -> Parameters with the set oneof field and its value."""
    if not entries:  # the usual case: no parameters
        return ()
    found = []
    for name, param in entries.items():
        kind = param.WhichOneof("parameter_choice") or ""
        found.append(Parameter(name, kind, getattr(param, kind) if kind else None))
    return tuple(found)


def decode_infer_request(data: bytes) -> InferRequest:
    """Serialized ModelInferRequest -> domain request (contents still undecoded)."""
    try:
        message = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        raise InvalidInputError(
            "request is not a valid ModelInferRequest message (truncated or malformed protobuf, "
            "or a string field that is not UTF-8)"
        ) from None
    raw = message.raw_input_contents
    inputs, index = [], 0
    for tensor in message.inputs:
        parameters = _parameters(tensor.parameters)
        shared = any(p.name == "shared_memory_region" for p in parameters)
        inputs.append(
            InferInput(
                name=tensor.name,
                datatype=tensor.datatype,
                shape=tuple(tensor.shape),
                # raw_input_contents hold the inputs not in shared memory, in order
                raw=raw[index] if not shared and index < len(raw) else None,
                contents=tensor.contents if tensor.HasField("contents") else None,
                parameters=parameters,
            )
        )
        index += not shared
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        inputs=tuple(inputs),
        outputs=tuple(output.name for output in message.outputs),
        raw_count=len(raw),
        parameters=_parameters(message.parameters),
        output_parameters=tuple(
            (output.name, param)
            for output in message.outputs
            for param in _parameters(output.parameters)
        ),
    )


def encode_infer_response(response: InferResponse) -> bytes:
    """Domain response -> serialized ModelInferResponse; tensors always in raw_output_contents."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for name, array in response.outputs:
        datatype, raw = encode_raw(array)
        message.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        message.raw_output_contents.append(raw)
    for shared in response.shared:  # after the others: raw_output_contents align with those
        tensor = message.outputs.add(name=shared.name, datatype=shared.datatype, shape=shared.shape)
        tensor.parameters["shared_memory_region"].string_param = shared.region
        tensor.parameters["shared_memory_byte_size"].int64_param = shared.byte_size
    return message.SerializeToString()


def _tensor_metadata(signature, specs) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=spec.name, datatype=spec.datatype.name, shape=signature.shape(spec)
        )
        for spec in specs
    ]


def _no_cuda_shared_memory(action: str):
    response = getattr(pb, f"CudaSharedMemory{action.capitalize()}Response")

    async def call(self, request):
        getattr(NO_CUDA_SHARED_MEMORY, action)(request.name)
        return response()

    return call


class InferenceServicer:
    """The implemented RPCs; each takes a request message (bytes for ModelInfer) and returns one."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)  # answering at all is being live

    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self.dataplane.model_ready(request.name, request.version)
        )

    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta.name, version=meta.version, extensions=meta.extensions
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        model, _ = self.dataplane.model(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=list(model.versions),
            platform=model.config.platform,
            inputs=_tensor_metadata(model.signature, model.signature.inputs),
            outputs=_tensor_metadata(model.signature, model.signature.outputs),
        )

    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        model, _ = self.dataplane.model(request.name, request.version)
        return pb.ModelConfigResponse(config=model.config)

    async def ModelInfer(self, request: bytes) -> bytes:
        response = await self.dataplane.infer(decode_infer_request(request))
        return encode_infer_response(response)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest
    ) -> pb.ModelStatisticsResponse:
        entries = self.dataplane.statistics(request.name, request.version)
        return json_format.ParseDict(
            {"model_stats": [version_statistics(*e) for e in entries]},
            pb.ModelStatisticsResponse(),
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest
    ) -> pb.RepositoryIndexResponse:
        entries = self.dataplane.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state, reason=e.reason
                )
                for e in entries
            ]
        )

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest
    ) -> pb.RepositoryModelLoadResponse:
        name = check_model_name(request.model_name)
        parameters = {
            p.name: (p.kind.removesuffix("_param"), p.value)
            for p in _parameters(request.parameters)
        }
        await self.dataplane.load(name, load_override(name, parameters))
        return pb.RepositoryModelLoadResponse()

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest
    ) -> pb.SystemSharedMemoryStatusResponse:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.dataplane.shared_memory.status(request.name):
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(**vars(region))
            )
        return response

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.dataplane.shared_memory.register(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.dataplane.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    # CUDA shared memory: none can be registered; status lists none, unregister does nothing.
    CudaSharedMemoryStatus = _no_cuda_shared_memory("status")
    CudaSharedMemoryRegister = _no_cuda_shared_memory("register")
    CudaSharedMemoryUnregister = _no_cuda_shared_memory("unregister")

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest
    ) -> pb.RepositoryModelUnloadResponse:
        await self.dataplane.unload(check_model_name(request.model_name))
        return pb.RepositoryModelUnloadResponse()


def _guarded(method: str, call: Callable[[Any], Awaitable[Any]], gate: DrainGate | None):
    """Wrap an RPC: counted in ``gate`` (UNAVAILABLE once it drains), domain errors -> their
    status (one log line), anything else -> INTERNAL."""

    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if gate is not None and (refusal := gate.admit()):
            busy = grpc.StatusCode.RESOURCE_EXHAUSTED
            if gate.draining:
                await gate.hold_refusal()
            await context.abort(grpc.StatusCode.UNAVAILABLE if gate.draining else busy, refusal)
        try:
            set_request_deadline(context.time_remaining())  # the batch queue drops late ones
            try:
                return await call(request)
            except ServeError as exc:
                code, message = grpc.StatusCode[status_for(exc).grpc], str(exc)
                if not isinstance(exc, DeadlineExceededError):  # the client gave up: not news
                    _rejections.warning("%s rejected: %s: %s", method, code.name, message)
            except Exception:
                log.exception("%s failed unexpectedly", method)
                code = grpc.StatusCode.INTERNAL
                message = f"internal error while handling {method}; the server log has the details"
            await context.abort(code, message)
        finally:
            if gate is not None:
                gate.done()

    return handler


def _parsed(request_class, call: Callable[[Any], Awaitable[Any]]):
    """Parse request bytes into ``request_class`` before ``call``; INVALID_ARGUMENT if they fail."""

    async def parse_then_call(data: bytes) -> Any:
        try:
            request = request_class.FromString(data)
        except DecodeError:
            raise InvalidInputError(
                f"request is not a valid {request_class.DESCRIPTOR.name} message"
            ) from None
        return await call(request)

    return parse_then_call


def _refused(method: str, code: grpc.StatusCode, message: str, logged: bool = True):
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> None:
        if logged:
            _rejections.warning("%s refused: %s: %s", method, code.name, message)
        await context.abort(code, message)

    return handler


def _unimplemented(method: str):
    message = f"{method} is not implemented by this server"
    return _refused(method, grpc.StatusCode.UNIMPLEMENTED, message, logged=False)


def build_handler(
    servicer: InferenceServicer,
    gate: DrainGate | None = None,
    allow_model_control: bool = True,
) -> grpc.GenericRpcHandler:
    """One generic handler for every method of GRPCInferenceService.

    ``gate`` counts the RPCs for the drain; without ``allow_model_control`` RepositoryModelLoad
    and RepositoryModelUnload answer PERMISSION_DENIED.
    """
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in service.methods:
        implementation = getattr(servicer, method.name, None)
        if method.client_streaming or method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _unimplemented(method.name)
            )
        elif implementation is None:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(_unimplemented(method.name))
        elif method.name in MODEL_CONTROL_METHODS and not allow_model_control:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _refused(
                    method.full_name,
                    grpc.StatusCode.PERMISSION_DENIED,
                    model_control_refusal(method.name),
                )
            )
        else:
            # No request deserializer anywhere: every request arrives as bytes and is parsed
            # in _parsed (ModelInfer: decode_infer_request), so undecodable input is ours to
            # answer with INVALID_ARGUMENT.
            if method.name != "ModelInfer":
                implementation = _parsed(getattr(pb, method.input_type.name), implementation)
            response_class = getattr(pb, method.output_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guarded(method.name, implementation, gate),
                response_serializer=None
                if method.name == "ModelInfer"
                else response_class.SerializeToString,
            )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
