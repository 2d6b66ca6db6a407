"""Checks of an inference request against the model, before anything runs.

Pure functions: domain request in, decoded numpy inputs out, or :class:`InvalidInputError` whose
message names the model, the tensor, what was expected and what came.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from .codec import decode_raw, decode_typed, decode_values
from .errors import InvalidInputError
from .model import Model, ModelSignature, TensorSpec

__all__ = [
    "InferInput",
    "InferRequest",
    "Parameter",
    "quote",
    "check_inputs",
    "check_outputs",
    "check_parameters",
    "check_finite",
]


@dataclass(frozen=True)
class Parameter:
    """One InferParameter: ``kind`` is the set oneof field ("int64_param"), "" when none is."""

    name: str
    kind: str
    value: Any = None


@dataclass(frozen=True)
class InferInput:
    """One input tensor as the client sent it, not yet decoded.

    Exactly one of ``raw`` (bytes from raw_input_contents, HTTP binary data or a shared-memory
    region), ``contents`` (gRPC's InferTensorContents) and ``values`` (JSON "data": a flat
    numpy array, or a list of str for BYTES) is set for a well-formed request.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: bytes | memoryview | None = None
    contents: Any = None
    values: Any = None
    parameters: tuple[Parameter, ...] = ()


@dataclass(frozen=True)
class InferRequest:
    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: tuple[InferInput, ...] = ()
    outputs: tuple[str, ...] = ()  # empty: every output
    raw_count: int = 0  # len(raw_input_contents), to check it against the inputs
    parameters: tuple[Parameter, ...] = ()  # request-level
    output_parameters: tuple[tuple[str, Parameter], ...] = ()  # (output name, parameter)


def quote(name: str, limit: int = 64) -> str:
    """A client-supplied name for a message: repr-escaped (no newlines in logs), bounded."""
    return repr(name[:limit]) + ("..." if len(name) > limit else "")


@functools.lru_cache(maxsize=256)
def _where(model_name: str) -> str:
    """Prefix of messages about a request to ``model_name`` (cached: built on every request)."""
    return f"model {quote(model_name)}"


def _check_content_kinds(request: InferRequest, where: str) -> None:
    if request.raw_count == 0:
        return
    typed = [t.name for t in request.inputs if t.contents is not None or t.values is not None]
    if typed:
        raise InvalidInputError(
            "contents field must not be specified when using raw_input_contents for "
            f"{quote(typed[0])} for {where}: the request has both raw_input_contents and "
            "typed contents; use one or the other"
        )
    if request.raw_count != len(request.inputs):
        raise InvalidInputError(
            f"{where}: {request.raw_count} raw_input_contents for {len(request.inputs)} "
            "input(s); expected one per input, in the order of the inputs"
        )


def _check_names(signature: ModelSignature, inputs, where: str) -> dict[str, InferInput]:
    by_name = {t.name: t for t in inputs}
    if len(by_name) == len(inputs) and by_name.keys() == signature.input_names:
        return by_name  # the common case, without building any message
    counts = Counter(t.name for t in inputs)
    duplicated = [name for name, n in counts.items() if n > 1]
    if duplicated:
        raise InvalidInputError(
            f"{where}: input {quote(duplicated[0])} appears {counts[duplicated[0]]} times"
        )
    expected = {spec.name: spec for spec in signature.inputs}
    unknown = [name for name in counts if name not in expected]
    if unknown:
        raise InvalidInputError(
            f"{where}: unknown input {quote(unknown[0])}; expected inputs: "
            f"{', '.join(map(quote, expected))}"
        )
    missing = [spec for name, spec in expected.items() if name not in counts]
    if missing:
        spec = missing[0]
        raise InvalidInputError(
            f"{where}: missing input {quote(spec.name)} "
            f"({spec.datatype.name} {signature.shape(spec)})"
        )
    return {t.name: t for t in inputs}


def _check_tensor(signature: ModelSignature, spec: TensorSpec, tensor: InferInput, where: str):
    shape, expected = tensor.shape, signature.shape(spec)
    if (
        tensor.datatype == spec.datatype.name
        and len(shape) == len(expected)
        and all(d == e or (e == -1 and d >= 0) for d, e in zip(shape, expected, strict=True))
        and signature.max_batch_size > 0
        and 0 < shape[0] <= signature.max_batch_size
    ):
        return  # the common case, without building any message
    where = f"{where} input {quote(spec.name)}"
    if tensor.datatype != spec.datatype.name:
        raise InvalidInputError(
            f"{where}: datatype {quote(tensor.datatype, 16)}, expected {spec.datatype.name}"
        )
    shape, expected = list(tensor.shape), signature.shape(spec)
    if any(dim < 0 for dim in shape):
        raise InvalidInputError(f"{where}: shape {shape[:8]} has a negative dimension")
    matches = len(shape) == len(expected) and all(
        e == -1 or d == e for d, e in zip(shape, expected, strict=True)
    )
    if not matches:
        raise InvalidInputError(f"{where}: shape {shape[:8]}, expected {expected} (-1: any size)")
    if signature.max_batch_size > 0:
        rows = shape[0]
        if rows == 0:
            raise InvalidInputError(f"{where}: batch size 0; at least 1 row is required")
        if rows > signature.max_batch_size:
            raise InvalidInputError(
                f"{where}: batch size {rows} exceeds max_batch_size {signature.max_batch_size}"
            )


def _decode(tensor: InferInput, where: str) -> np.ndarray:
    try:
        if tensor.raw is not None:
            return decode_raw(tensor.raw, tensor.datatype, tensor.shape)
        if tensor.contents is not None:
            return decode_typed(tensor.contents, tensor.datatype, tensor.shape)
        if tensor.values is not None:
            return decode_values(tensor.values, tensor.datatype, tensor.shape)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where} input {quote(tensor.name)}: {exc}") from None
    where = f"{where} input {quote(tensor.name)}"
    raise InvalidInputError(f"{where}: no data; expected typed contents or raw_input_contents")


def check_inputs(model: Model, request: InferRequest) -> dict[str, np.ndarray]:
    """Validate every input against ``model`` and decode it: {input name: array}."""
    where = _where(model.name)
    _check_content_kinds(request, where)
    by_name = _check_names(model.signature, request.inputs, where)
    for spec in model.signature.inputs:
        _check_tensor(model.signature, spec, by_name[spec.name], where)
    if model.signature.max_batch_size > 0 and len({t.shape[0] for t in request.inputs}) > 1:
        rows = {t.name: t.shape[0] for t in request.inputs}
        raise InvalidInputError(f"{where}: inputs disagree on the batch size: {rows}")
    return {spec.name: _decode(by_name[spec.name], where) for spec in model.signature.inputs}


def check_outputs(model: Model, requested: tuple[str, ...]) -> tuple[str, ...]:
    """The outputs to return: the requested ones (known, no repeats) or all of them."""
    names = model.signature.output_names
    if not requested or (len(requested) == 1 and requested[0] in names):
        return requested or names
    where = _where(model.name)
    for name, count in Counter(requested).items():
        if name not in names:
            raise InvalidInputError(
                f"{where}: unknown output {quote(name)}; outputs: {', '.join(map(quote, names))}"
            )
        if count > 1:
            raise InvalidInputError(f"{where}: output {quote(name)} requested {count} times")
    return requested


# Request parameters of the protocol that change what a request means: their type is checked.
# priority is accepted and not acted on (no priority queues); timeout (microseconds) becomes
# the request's deadline (serve/batching.py). Other names are ignored, as Triton passes
# unknown ones to its backends.
_INTEGER = ("int64_param", "uint64_param")
_REQUEST_PARAMETERS = {
    "priority": _INTEGER,
    "timeout": _INTEGER,
    "sequence_id": (*_INTEGER, "string_param"),
    "sequence_start": ("bool_param",),
    "sequence_end": ("bool_param",),
}
_SEQUENCE = ("sequence_id", "sequence_start", "sequence_end")


def _check_kind(param: Parameter, allowed: tuple[str, ...], where: str) -> None:
    if param.kind not in allowed:
        got = param.kind or "no value"
        raise InvalidInputError(
            f"{where}: parameter {quote(param.name)} is {got}, expected {' or '.join(allowed)}"
        )


def check_parameters(model: Model, request: InferRequest) -> None:
    """Type-check the parameters that matter; refuse the ones this model cannot honour."""
    where = _where(model.name)
    for param in request.parameters:
        allowed = _REQUEST_PARAMETERS.get(param.name)
        if allowed is None:
            continue
        _check_kind(param, allowed, where)
        if param.name == "timeout" and param.value < 0:
            raise InvalidInputError(f"{where}: parameter 'timeout' is {param.value}, expected >= 0")
        if param.name in _SEQUENCE and param.value:
            raise InvalidInputError(
                f"{where}: parameter {quote(param.name)} is set, but this model is not a "
                "sequence model (no sequence batching); send the request without it"
            )
    for output, param in request.output_parameters:
        if param.name == "classification":
            raise InvalidInputError(
                f"{where} output {quote(output)}: parameter 'classification' is not supported "
                "(no classification extension); request 'probabilities' and take the top classes"
            )


def check_finite(model: Model, inputs: dict[str, np.ndarray]) -> None:
    """Refuse NaN and +-inf in floating-point inputs (``--reject-non-finite``)."""
    for name, array in inputs.items():
        if array.dtype.kind != "f":
            continue
        bad = ~np.isfinite(array)
        if bad.any():
            first = [int(i) for i in np.argwhere(bad)[0]]
            raise InvalidInputError(
                f"model {quote(model.name)} input {quote(name)}: {int(bad.sum())} non-finite "
                f"value(s) (NaN or inf), the first at index {first}; this server refuses them "
                "(--reject-non-finite)"
            )
