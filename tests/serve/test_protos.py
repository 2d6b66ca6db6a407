"""Generated code is reproducible; the protos are wire-compatible with Triton's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "protos"))
import generate  # noqa: E402


def test_committed_code_equals_fresh_generation(tmp_path):
    fresh = generate.generated_files(tmp_path)
    assert set(fresh) == {
        "grpc_service_pb2.py",
        "grpc_service_pb2.pyi",
        "grpc_service_pb2_grpc.py",
        "model_config_pb2.py",
        "model_config_pb2.pyi",
    }
    for name, text in fresh.items():
        committed = (generate.OUTPUT_DIR / name).read_text()
        assert committed == text, f"serve/proto/{name} is stale: run python protos/generate.py"
    assert "from . import model_config_pb2" in fresh["grpc_service_pb2.py"]


def _describe(package: str) -> dict:
    # tritonclient and our modules both define package `inference`: one process each.
    script = Path(__file__).with_name("describe_protos.py")
    result = subprocess.run(
        [sys.executable, str(script), package], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def test_wire_compatible_with_tritonclient():
    ours, theirs = _describe("bnmodel"), _describe("tritonclient")
    assert ours["methods"] == theirs["methods"]  # every RPC, same types and streaming
    assert ours["enums"] == {k: theirs["enums"][k] for k in ours["enums"]}
    for message, ours_message in ours["messages"].items():
        assert message in theirs["messages"], message
        for field, description in ours_message["fields"].items():
            assert theirs["messages"][message]["fields"][field] == description, f"{message}.{field}"
    # grpc_service.proto is complete (model_config.proto is trimmed to what ONNX models use).
    for message, their_message in theirs["messages"].items():
        if their_message["file"] == "grpc_service.proto":
            assert ours["messages"][message]["fields"] == their_message["fields"], message
