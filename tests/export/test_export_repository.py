"""config.pbtxt parses as a Triton model config and matches the ONNX graph it sits beside."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from bnmodel.export.api import export_checkpoint
from bnmodel.export.repository import MAX_QUEUE_DELAY_US, validate_layout
from export_testlib import make_checkpoint

_ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}
_PARSER = Path(__file__).with_name("triton_config_json.py")


def _parse(path: Path) -> dict:
    """The config as tritonclient's ModelConfig reads it, in a process of its own."""
    done = subprocess.run(
        [sys.executable, str(_PARSER), str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _io(values) -> list[tuple[str, int, list[int]]]:
    """(name, Triton data type, dims without the batch axis) of ONNX graph inputs/outputs."""
    return [
        (
            v.name,
            _ONNX_TO_TRITON[v.type.tensor_type.elem_type],
            [d.dim_value for d in v.type.tensor_type.shape.dim[1:]],
        )
        for v in values
    ]


@pytest.mark.parametrize(("task", "fp16"), [("classification", False), ("regression", True)])
def test_config_parses_as_triton_config_and_matches_the_graph(
    tmp_path: Path, task: str, fp16: bool
) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", task=task)
    result = export_checkpoint(
        ckpt,
        repository=tmp_path / "repo",
        name="clf",
        version=3,
        fp16=fp16,
        max_batch_size=256,
        verify=False,
    )
    assert result.repository.config == tmp_path / "repo" / "clf" / "config.pbtxt"
    assert result.repository.model == tmp_path / "repo" / "clf" / "3" / "model.onnx"
    config = _parse(result.repository.config)
    graph = onnx.load(result.repository.model).graph
    assert (config["name"], config["platform"], config["max_batch_size"]) == (
        "clf",
        "onnxruntime_onnx",
        256,
    )
    # JSON renders int64 dims as strings.
    assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in config["input"]] == (
        _io(graph.input)
    )
    assert [(o["name"], o["data_type"], [int(d) for d in o["dims"]]) for o in config["output"]] == (
        _io(graph.output)
    )
    delay = config["dynamic_batching"]["max_queue_delay_microseconds"]
    assert int(delay) == MAX_QUEUE_DELAY_US
    assert config["version_policy"]["latest"]["num_versions"] == 1
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert params["task"] == task
    assert json.loads(params["feature_names"]) == [f"x{i}" for i in range(6)]
    labels = json.loads(params["class_labels"])
    assert labels == ([f"class{i}" for i in range(3)] if task == "classification" else [])
    assert params["target_name"] == "y"  # clients head their output columns with it


@pytest.mark.parametrize(
    ("name", "version", "batch", "flag"),
    [
        ("../up", 1, 8, "--name"),
        ("a/b", 1, 8, "--name"),
        ("", 1, 8, "--name"),
        ("ok", 0, 8, "--version"),
        ("ok", 1, 0, "--max-batch-size"),
    ],
)
def test_bad_layout_arguments_name_the_flag(name: str, version: int, batch: int, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        validate_layout(name, version, batch)
