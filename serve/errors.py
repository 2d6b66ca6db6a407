"""Domain errors of the server and the one mapping from them to gRPC status codes.

The data plane raises these; the servicer turns them into a status with :func:`status_code_for`.
Their messages go to the client as they are, so they name the model, tensor, expected and
received values, and never carry Python, numpy or ONNX Runtime internals.
"""

from __future__ import annotations

import grpc

__all__ = [
    "ServeError",
    "ModelNotFoundError",
    "InvalidInputError",
    "ModelLoadError",
    "ModelNotReadyError",
    "ResourceExhaustedError",
    "DeadlineExceededError",
    "STATUS_CODES",
    "status_code_for",
]


class ServeError(Exception):
    """Base of every error the server reports to a client with its own message.

    ``detail`` is extra text for the server log only (for example ONNX Runtime's reason).
    """

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class ModelNotFoundError(ServeError, LookupError):
    """Unknown model name or version."""


class InvalidInputError(ServeError, ValueError):
    """A request that is malformed or does not match the model (tensor names, types, shapes)."""


class ModelLoadError(ServeError, ValueError):
    """A model that cannot be loaded: bad config.pbtxt, bad or mismatched model file."""


class ModelNotReadyError(ServeError):
    """The model exists but is being unloaded or is not loaded."""


class ResourceExhaustedError(ServeError):
    """A bounded resource (for example a batching queue) is full."""


class DeadlineExceededError(ServeError):
    """The client's deadline passed while its request waited; it was not run."""


# The one table from domain error to status code; the most specific class wins (checked in MRO
# order by status_code_for), and anything that is not a ServeError is INTERNAL.
STATUS_CODES: dict[type[ServeError], grpc.StatusCode] = {
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelLoadError: grpc.StatusCode.FAILED_PRECONDITION,
    ModelNotReadyError: grpc.StatusCode.UNAVAILABLE,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code_for(error: BaseException) -> grpc.StatusCode:
    """The status a client gets for ``error``: INTERNAL for anything unexpected."""
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL
