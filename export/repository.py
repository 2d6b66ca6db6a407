"""Model-repository layout that Triton Inference Server also accepts, and that bnmodel serve loads.

    ROOT/NAME/config.pbtxt        model configuration (protobuf text format)
    ROOT/NAME/VERSION/model.onnx  the graph

The config is the ``inference.ModelConfig`` message the server parses (``serve/proto``), printed
with protobuf's ``text_format``: one implementation writes and reads it, no hand quoting.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bnmodel.serve.proto import model_config_pb2
from google.protobuf import text_format

from bnmodel.contract import FEATURES_INPUT, ModelContract
from bnmodel.files import atomic_folder, atomic_write_bytes

__all__ = [
    "MAX_QUEUE_DELAY_US",
    "RepositoryPaths",
    "model_config",
    "validate_layout",
    "write_repository",
]

# How long the dynamic batcher holds a request to merge it with others: 100 us is below one
# gRPC round trip on localhost (a few hundred us) yet long enough for concurrent single-row
# requests to share one Gemm, which costs about the same for 1 row as for 64.
MAX_QUEUE_DELAY_US = 100
_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # one directory name, safe in a URL and in config text


@dataclass(frozen=True)
class RepositoryPaths:
    config: Path  # ROOT/NAME/config.pbtxt
    model: Path  # ROOT/NAME/VERSION/model.onnx
    report: Path | None = None  # ROOT/NAME/VERSION/model.report.json


def model_config(
    name: str,
    *,
    in_features: int,
    outputs: Sequence[tuple[str, int]],
    fp16: bool,
    max_batch_size: int,
    contract: ModelContract,
    input_name: str = FEATURES_INPUT,
) -> model_config_pb2.ModelConfig:
    """The config message; dims omit the batch axis, which Triton adds from max_batch_size.

    A raw-row model lists "features" only when it has numeric columns (``in_features`` >= 1),
    then one TYPE_STRING input of dims [1] per categorical column and one TYPE_FP64 per date
    column, in the graph's order. The
    parameters are the model's data contract (``ModelContract.to_parameters``).
    """
    data_type = model_config_pb2.TYPE_FP16 if fp16 else model_config_pb2.TYPE_FP32
    config = model_config_pb2.ModelConfig(
        name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size
    )
    if in_features >= 1 or not (contract.categorical_columns or contract.date_columns):
        config.input.add(name=input_name, data_type=data_type, dims=[in_features])
    for column in contract.categorical_columns:
        config.input.add(name=column, data_type=model_config_pb2.TYPE_STRING, dims=[1])
    for column in contract.date_columns:  # seconds since 1970 UTC: float32 would round them
        config.input.add(name=column, data_type=model_config_pb2.TYPE_FP64, dims=[1])
    for output, width in outputs:
        config.output.add(name=output, data_type=data_type, dims=[width])
    config.dynamic_batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    config.version_policy.latest.num_versions = 1
    for key, value in contract.to_parameters().items():
        config.parameters[key].string_value = value
    return config


def validate_layout(name: str, version: int, max_batch_size: int) -> None:
    """Raise ValueError naming the flag when a repository argument cannot make a valid layout."""
    if not _NAME.fullmatch(name) or name in {".", ".."}:
        raise ValueError(f"--name must be letters, digits, '_', '-' or '.', got {name!r}")
    if version < 1:
        raise ValueError(
            f"--version must be an integer >= 1 (a Triton version folder), got {version}"
        )
    if max_batch_size < 1:
        raise ValueError(
            f"--max-batch-size must be >= 1 (the batch axis is symbolic), got {max_batch_size}"
        )


def write_repository(
    root: str | os.PathLike[str],
    name: str,
    version: int,
    model_bytes: bytes,
    config: model_config_pb2.ModelConfig,
    report_text: str | None = None,
) -> RepositoryPaths:
    """Write the version folder (model and report) and the config, all or nothing.

    The version folder is filled under a temp name and renamed into place last, after the
    config: a full disk or a Ctrl-C leaves no partial model, no empty version folder and no
    model without its config.pbtxt; the error names the path that could not be written.
    """
    model_dir = Path(root) / name
    version_dir = model_dir / str(version)
    model = version_dir / "model.onnx"
    report = None if report_text is None else model.with_suffix(".report.json")
    config_path = model_dir / "config.pbtxt"
    with atomic_folder(version_dir) as staging:
        atomic_write_bytes(staging / model.name, model_bytes)
        if report is not None:
            atomic_write_bytes(staging / report.name, report_text.encode())
        atomic_write_bytes(config_path, text_format.MessageToString(config).encode())
    return RepositoryPaths(config_path, model, report)
