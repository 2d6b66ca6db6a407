"""Domain errors of the server, and the one table from them to each protocol's status.

The data plane raises these; the gRPC servicer and the HTTP app look their status up in
:data:`STATUS` (:func:`status_for`). The errors themselves know no protocol. Their messages go
to the client as they are, so they name the model, tensor, expected and received values, and
never carry Python, numpy or ONNX Runtime internals.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "ServeError",
    "ModelNotFoundError",
    "InvalidInputError",
    "ModelLoadError",
    "ModelNotReadyError",
    "ResourceExhaustedError",
    "DeadlineExceededError",
    "AlreadyExistsError",
    "Status",
    "STATUS",
    "INTERNAL",
    "status_for",
]


class ServeError(Exception):
    """Base of every error the server reports to a client with its own message.

    ``detail`` is extra text for the server log only (for example ONNX Runtime's reason).
    """

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class ModelNotFoundError(ServeError, LookupError):
    """Unknown model name or version, or unknown shared-memory region."""


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


class AlreadyExistsError(ServeError):
    """A name already taken (a shared-memory region registered twice)."""


class Status(NamedTuple):
    grpc: str  # grpc.StatusCode member name
    http: int


# The one table from domain error to status; the most specific class wins (checked in MRO order
# by status_for), and anything that is not a ServeError is INTERNAL.
STATUS: dict[type[ServeError], Status] = {
    ModelNotFoundError: Status("NOT_FOUND", 404),
    InvalidInputError: Status("INVALID_ARGUMENT", 400),
    ModelLoadError: Status("FAILED_PRECONDITION", 400),
    ModelNotReadyError: Status("UNAVAILABLE", 503),
    ResourceExhaustedError: Status("RESOURCE_EXHAUSTED", 429),
    DeadlineExceededError: Status("DEADLINE_EXCEEDED", 504),
    AlreadyExistsError: Status("ALREADY_EXISTS", 409),
}
INTERNAL = Status("INTERNAL", 500)


def status_for(error: BaseException) -> Status:
    """The status a client gets for ``error``: INTERNAL for anything unexpected."""
    for cls in type(error).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return INTERNAL
