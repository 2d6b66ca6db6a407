"""Codecs: raw bytes and typed contents <-> numpy, both directions, and their refusals."""

from __future__ import annotations

import numpy as np
import pytest
from bnmodel.serve.codec import (
    DATATYPES,
    datatype_of,
    decode_raw,
    decode_typed,
    element_count,
    encode_raw,
    encode_typed,
)
from bnmodel.serve.errors import InvalidInputError
from bnmodel.serve.proto import grpc_service_pb2 as pb

NUMERIC = sorted(n for n in DATATYPES if n != "BYTES")  # BYTES: tests/serve/test_bytes.py


@pytest.mark.parametrize("name", NUMERIC)
def test_raw_round_trip_every_datatype(name):
    dtype = DATATYPES[name].dtype
    array = (np.arange(12) % 2 if name == "BOOL" else np.arange(12)).astype(dtype).reshape(3, 4)
    datatype, raw = encode_raw(array)
    assert datatype.name == name
    assert len(raw) == array.nbytes
    np.testing.assert_array_equal(decode_raw(raw, name, (3, 4)), array)


@pytest.mark.parametrize("name", [n for n in NUMERIC if DATATYPES[n].contents_field])
def test_typed_round_trip(name):
    dtype = DATATYPES[name].dtype
    array = np.arange(6) % 2 if name == "BOOL" else np.arange(6) - 2 * (name[0] != "U")
    array = array.astype(dtype).reshape(2, 3)
    contents = pb.InferTensorContents()
    assert encode_typed(array, contents).name == name
    np.testing.assert_array_equal(decode_typed(contents, name, (2, 3)), array)


def test_big_endian_arrays_are_sent_little_endian():
    array = np.arange(4, dtype=">f4")
    _, raw = encode_raw(array)
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), array)
    assert datatype_of(array).name == "FP32"


@pytest.mark.parametrize(
    ("raw", "shape", "fragment"),
    [
        (b"\0" * 31, (2, 4), "31 bytes, expected 32"),
        (b"\0" * 33, (2, 4), "33 bytes, expected 32"),
        (b"", (-1, 4), "negative dimension"),
    ],
)
def test_raw_size_must_match_shape(raw, shape, fragment):
    with pytest.raises(InvalidInputError, match=fragment):
        decode_raw(raw, "FP32", shape)


def test_huge_shape_does_not_overflow():
    with pytest.raises(InvalidInputError, match="16 bytes, expected 73786976294838206464 "):
        decode_raw(b"\0" * 16, "FP32", (2**32, 2**32))
    assert element_count((2**40, 2**40)) == 2**80  # Python ints: no wrap-around


@pytest.mark.parametrize("name", ["BF16", "fp32", "STRING", ""])
def test_unsupported_datatypes_are_named(name):
    with pytest.raises(InvalidInputError, match="not supported"):
        decode_raw(b"", name, (0,))


def test_typed_contents_in_the_wrong_field():
    contents = pb.InferTensorContents(int_contents=[1, 2])
    with pytest.raises(InvalidInputError, match="int_contents, expected fp32_contents"):
        decode_typed(contents, "FP32", (1, 2))


def test_typed_count_and_range():
    with pytest.raises(InvalidInputError, match="3 values, expected 4"):
        decode_typed(pb.InferTensorContents(fp32_contents=[1, 2, 3]), "FP32", (2, 2))
    with pytest.raises(InvalidInputError, match="outside the INT8 range"):
        decode_typed(pb.InferTensorContents(int_contents=[300]), "INT8", (1,))
    with pytest.raises(InvalidInputError, match="raw_input_contents"):
        decode_typed(pb.InferTensorContents(), "FP16", (0,))
