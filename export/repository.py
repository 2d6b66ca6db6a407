"""Model-repository layout that Triton Inference Server also accepts, and that bnmodel serve loads.

    ROOT/NAME/config.pbtxt        model configuration (protobuf text format)
    ROOT/NAME/VERSION/model.onnx  the graph

The config is written as text here (no tritonclient at export time); the tests parse it with
tritonclient's generated ``model_config_pb2`` to prove Triton would read the same thing.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MAX_QUEUE_DELAY_US",
    "RepositoryPaths",
    "model_config_text",
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


def _quote(text: str) -> str:
    """A protobuf text-format string literal (inputs are ASCII: names are checked, JSON escapes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor(name: str, data_type: str, width: int) -> str:
    return (
        f"  {{\n    name: {_quote(name)}\n    data_type: {data_type}\n    dims: [ {width} ]\n  }}"
    )


def model_config_text(
    name: str,
    *,
    task: str,
    in_features: int,
    outputs: Sequence[tuple[str, int]],
    fp16: bool,
    max_batch_size: int,
    feature_names: Sequence[str],
    class_labels: Sequence[str] | None,
    input_name: str = "features",
) -> str:
    """config.pbtxt text; dims omit the batch axis, which Triton adds from max_batch_size."""
    data_type = "TYPE_FP16" if fp16 else "TYPE_FP32"
    parameters = {
        "task": task,
        "class_labels": json.dumps(list(class_labels or [])),
        "feature_names": json.dumps(list(feature_names)),
    }
    params = ",\n".join(
        f"  {{ key: {_quote(k)} value: {{ string_value: {_quote(v)} }} }}"
        for k, v in parameters.items()
    )
    output_blocks = ",\n".join(_tensor(n, data_type, w) for n, w in outputs)
    return (
        f"name: {_quote(name)}\n"
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{_tensor(input_name, data_type, in_features)}\n]\n"
        f"output [\n{output_blocks}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}\n}}\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
        f"parameters [\n{params}\n]\n"
    )


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
    root: str | os.PathLike[str], name: str, version: int, model_bytes: bytes, config_text: str
) -> RepositoryPaths:
    """Write the model, then the config, each atomically: a config never names a missing model."""
    model_dir = Path(root) / name
    paths = RepositoryPaths(model_dir / "config.pbtxt", model_dir / str(version) / "model.onnx")
    for path, data in ((paths.model, model_bytes), (paths.config, config_text.encode())):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return paths
