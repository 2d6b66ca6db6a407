"""Tensor codecs: protocol datatypes, raw bytes and typed contents <-> numpy arrays.

Pure functions over numpy (and any object with InferTensorContents' repeated fields); no gRPC.
Errors are :class:`InvalidInputError` whose message says what was expected and what came; the
caller prefixes the model and tensor names.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidInputError

__all__ = [
    "Datatype",
    "BYTES",
    "DATATYPES",
    "CONTENT_FIELDS",
    "lookup_datatype",
    "datatype_of",
    "datatype_from_config",
    "datatype_from_ort",
    "element_count",
    "decode_raw",
    "decode_typed",
    "decode_values",
    "encode_raw",
    "encode_typed",
]


@dataclass(frozen=True)
class Datatype:
    """One protocol datatype: its numpy dtype (little-endian, as on the wire) and typed field."""

    name: str  # protocol name, "FP32"
    dtype: np.dtype
    contents_field: str | None  # InferTensorContents field, None where the protocol has none
    config_name: str  # model_config.proto DataType, "TYPE_FP32"
    ort_name: str  # ONNX Runtime NodeArg.type, "tensor(float)"


def _dt(name: str, dtype: str, field: str | None, config: str, ort: str) -> Datatype:
    return Datatype(name, np.dtype(dtype), field, config, ort)


# BYTES: variable-length strings (a categorical column of a raw-row model). numpy has no such
# dtype: a BYTES tensor is an object array of str, which ONNX Runtime takes for tensor(string).
# On the wire each element is a 4-byte little-endian length and that many bytes (raw contents),
# or one entry of bytes_contents; the server takes only valid UTF-8 (ORT strings are UTF-8).
BYTES = _dt("BYTES", "O", "bytes_contents", "TYPE_STRING", "tensor(string)")

# BF16 is part of the protocol but not of this server (numpy has no bf16): looking it up gives
# a clear "not supported".
DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        _dt("BOOL", "?", "bool_contents", "TYPE_BOOL", "tensor(bool)"),
        _dt("UINT8", "u1", "uint_contents", "TYPE_UINT8", "tensor(uint8)"),
        _dt("UINT16", "<u2", "uint_contents", "TYPE_UINT16", "tensor(uint16)"),
        _dt("UINT32", "<u4", "uint_contents", "TYPE_UINT32", "tensor(uint32)"),
        _dt("UINT64", "<u8", "uint64_contents", "TYPE_UINT64", "tensor(uint64)"),
        _dt("INT8", "i1", "int_contents", "TYPE_INT8", "tensor(int8)"),
        _dt("INT16", "<i2", "int_contents", "TYPE_INT16", "tensor(int16)"),
        _dt("INT32", "<i4", "int_contents", "TYPE_INT32", "tensor(int32)"),
        _dt("INT64", "<i8", "int64_contents", "TYPE_INT64", "tensor(int64)"),
        _dt("FP16", "<f2", None, "TYPE_FP16", "tensor(float16)"),
        _dt("FP32", "<f4", "fp32_contents", "TYPE_FP32", "tensor(float)"),
        _dt("FP64", "<f8", "fp64_contents", "TYPE_FP64", "tensor(double)"),
        BYTES,
    )
}
_LENGTH = struct.Struct("<I")  # the length before each BYTES element in raw contents
_BY_DTYPE = {d.dtype.newbyteorder("="): d for d in DATATYPES.values()}
_BY_CONFIG = {d.config_name: d for d in DATATYPES.values()}
_BY_ORT = {d.ort_name: d for d in DATATYPES.values()}
_SUPPORTED = ", ".join(DATATYPES)

CONTENT_FIELDS = (
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
)


def lookup_datatype(name: str) -> Datatype:
    """The :class:`Datatype` called ``name`` ("FP32"), or InvalidInputError."""
    found = DATATYPES.get(name)
    if found is None:
        shown = repr(name[:32]) if name else "empty"
        raise InvalidInputError(f"datatype {shown} is not supported; expected one of {_SUPPORTED}")
    return found


def datatype_of(array: np.ndarray) -> Datatype:
    """The protocol datatype of a numpy array (any byte order)."""
    found = _BY_DTYPE.get(array.dtype.newbyteorder("="))
    if found is None and array.dtype.kind in "US":  # numpy str_ or bytes_ arrays: strings
        return BYTES
    if found is None:
        raise InvalidInputError(
            f"numpy dtype {array.dtype} has no protocol datatype; use one of {_SUPPORTED}"
        )
    return found


def datatype_from_config(config_name: str) -> Datatype:
    """The datatype of a config.pbtxt DataType name ("TYPE_FP32")."""
    found = _BY_CONFIG.get(config_name)
    if found is None:
        supported = ", ".join(_BY_CONFIG)
        raise InvalidInputError(f"data_type {config_name} is not supported; expected {supported}")
    return found


def datatype_from_ort(ort_type: str) -> Datatype:
    """The datatype of an ONNX Runtime NodeArg type ("tensor(float)")."""
    found = _BY_ORT.get(ort_type)
    if found is None:
        raise InvalidInputError(f"ONNX type {ort_type} is not supported by this server")
    return found


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of ``shape``; dimensions must be >= 0 (Python ints never overflow)."""
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidInputError(f"shape {list(shape)} has a negative dimension")
        count *= dim
    return count


def decode_raw(raw: bytes, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """Raw little-endian bytes -> array of ``shape`` (read-only view of ``raw``, no copy;
    BYTES: an object array of str)."""
    dt = lookup_datatype(datatype)
    if dt is BYTES:
        return _decode_strings(raw, element_count(shape)).reshape(tuple(shape))
    expected = element_count(shape) * dt.dtype.itemsize
    if len(raw) != expected:
        raise InvalidInputError(
            f"raw contents hold {len(raw)} bytes, expected {expected} "
            f"({datatype} with shape {list(shape)})"
        )
    return np.frombuffer(raw, dtype=dt.dtype).reshape(tuple(shape))


def _utf8_error(index: int, exc: UnicodeDecodeError) -> InvalidInputError:
    return InvalidInputError(
        f"element {index} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset "
        f"{exc.start} of the element)"
    )


def _framing_error(data: bytes, count: int) -> InvalidInputError:
    """What is wrong with the framing of BYTES raw contents that did not parse (walked again,
    element by element, only on this error path)."""
    size, offset = len(data), 0
    for i in range(count):
        if offset + 4 > size:
            return InvalidInputError(
                f"raw contents end ({size} bytes) inside the 4-byte length of element {i}; "
                f"expected {count} elements (BYTES: each a 4-byte little-endian length, then "
                "the bytes)"
            )
        (length,) = _LENGTH.unpack_from(data, offset)
        start, offset = offset + 4, offset + 4 + length
        if offset > size:
            return InvalidInputError(
                f"element {i} declares {length} bytes, but only {size - start} remain of the "
                f"{size}-byte raw contents"
            )
    return InvalidInputError(
        f"raw contents hold {size} bytes, {size - offset} more than the {count} BYTES "
        "element(s) of the shape"
    )


def _decode_strings(raw: bytes | memoryview, count: int) -> np.ndarray:
    """BYTES raw contents (per element: 4-byte little-endian length, then the bytes) -> object
    array of ``count`` str, checking the framing and that every element is UTF-8."""
    data = raw if isinstance(raw, bytes) else bytes(raw)
    # All ASCII (the usual case: short strings, their lengths' bytes below 0x80 too): one decode
    # of the whole buffer, whose character offsets are then its byte offsets, and no bounds
    # checks in the loop (a bad frame fails struct or the final offset; _framing_error says
    # which). 3 x 64 short strings: 28 us, where decoding each element took 55 us.
    text = data.decode("ascii") if data.isascii() else None
    values: list[str] = []
    append, unpack = values.append, _LENGTH.unpack_from
    offset = 0
    try:
        if text is not None:
            for _ in range(count):
                start = offset + 4
                offset = start + unpack(data, offset)[0]
                append(text[start:offset])
        else:
            for _ in range(count):
                start = offset + 4
                offset = start + unpack(data, offset)[0]
                append(str(data[start:offset], "utf-8"))
    except struct.error:
        raise _framing_error(data, count) from None
    except UnicodeDecodeError as exc:
        if offset > len(data):  # cut short by the end of the data, not a bad string
            raise _framing_error(data, count) from None
        raise _utf8_error(len(values), exc) from None
    if offset != len(data):
        raise _framing_error(data, count)
    out = np.empty(count, dtype=object)
    out[:] = values
    return out


def _strings(values: Sequence[Any]) -> np.ndarray:
    """bytes_contents (bytes; str when they came as JSON) -> object array of str."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        if type(value) is not str:
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _utf8_error(i, exc) from None
        out[i] = value
    return out


def _typed_values(contents: Any, dt: Datatype) -> Any:
    if dt.contents_field is None:
        raise InvalidInputError(
            f"{dt.name} has no typed contents field; send it in raw_input_contents"
        )
    for field in CONTENT_FIELDS:
        if field != dt.contents_field and len(getattr(contents, field)):
            raise InvalidInputError(
                f"typed contents are in {field}, expected {dt.contents_field} for {dt.name}"
            )
    return getattr(contents, dt.contents_field)


def decode_typed(contents: Any, datatype: str, shape: Sequence[int]) -> np.ndarray:
    """InferTensorContents -> array of ``shape``; checks the field, count and value range."""
    return decode_values(_typed_values(contents, lookup_datatype(datatype)), datatype, shape)


def decode_values(values: Sequence[Any], datatype: str, shape: Sequence[int]) -> np.ndarray:
    """A flat sequence of typed values (one contents field, or JSON "data") -> array of
    ``shape``; checks the count and value range."""
    dt = lookup_datatype(datatype)
    expected = element_count(shape)
    if len(values) != expected:
        raise InvalidInputError(
            f"typed contents hold {len(values)} values, expected {expected} "
            f"({datatype} with shape {list(shape)})"
        )
    if dt is BYTES:
        return _strings(values).reshape(tuple(shape))
    if dt.dtype.kind in "iu" and dt.dtype.itemsize < 8:
        # int_contents/uint_contents carry 32-bit values for 8/16-bit types: range-check them.
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(dt.dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise InvalidInputError(
                f"typed contents hold values outside the {datatype} range [{info.min}, {info.max}]"
            )
        return wide.astype(dt.dtype).reshape(tuple(shape))
    return np.asarray(values, dtype=dt.dtype).reshape(tuple(shape))


def _encoded_strings(array: np.ndarray) -> list[bytes]:
    """Elements of a string array (str, or bytes as they are), row-major, as bytes."""
    encoded = []
    for i, value in enumerate(array.ravel().tolist()):
        if isinstance(value, str):
            try:
                value = value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate
                raise InvalidInputError(
                    f"BYTES element {i} has no UTF-8 form ({exc.reason} at character {exc.start})"
                ) from None
        elif not isinstance(value, bytes):
            raise InvalidInputError(
                f"BYTES element {i} is {type(value).__name__} {value!r:.32}, expected str or bytes"
            )
        encoded.append(value)
    return encoded


def encode_raw(array: np.ndarray) -> tuple[Datatype, bytes]:
    """Array -> (datatype, raw little-endian row-major bytes; BYTES: length-prefixed)."""
    dt = datatype_of(array)
    if dt is BYTES:
        parts = _encoded_strings(array)
        return dt, b"".join(p for value in parts for p in (_LENGTH.pack(len(value)), value))
    return dt, np.ascontiguousarray(array, dtype=dt.dtype).tobytes()


def encode_typed(array: np.ndarray, contents: Any) -> Datatype:
    """Append ``array``'s elements to the matching repeated field of ``contents``."""
    dt = datatype_of(array)
    if dt.contents_field is None:
        raise InvalidInputError(f"{dt.name} has no typed contents field; send it raw")
    values = _encoded_strings(array) if dt is BYTES else array.ravel().tolist()
    getattr(contents, dt.contents_field).extend(values)
    return dt
