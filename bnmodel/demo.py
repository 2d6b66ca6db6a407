"""``bnmodel demo``: the whole pipeline on the embedded digits data, end to end.

train (CPU is fine) -> export folded ONNX into a model repository, with its equivalence
report -> start ``bnmodel serve`` on a free local port -> classify the held-out rows through the
gRPC client -> compare the served accuracy with PyTorch's -> stop the server. This module is the
one place, beside the CLI, that ties the three stages together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bnmodel.checkpoint import load_checkpoint
from bnmodel.data import validation_split
from bnmodel.export.api import export_checkpoint
from bnmodel.launcher import spawn_server
from bnmodel.serve.client import InferenceClient
from bnmodel.train import train
from bnmodel.train_config import TrainConfig

__all__ = ["DemoResult", "run_demo"]

MODEL_NAME = "digits"


@dataclass(frozen=True)
class DemoResult:
    rows: int  # held-out rows classified
    torch_accuracy: float  # unfolded PyTorch model, eval mode
    served_accuracy: float  # folded ONNX through the gRPC server
    agreement: float  # fraction of rows where both predict the same class
    max_abs_prob_diff: float  # largest |p_served - p_torch| over all rows and classes
    repository: Path
    seconds: float


def _torch_probabilities(checkpoint_path: Path, rows: np.ndarray) -> np.ndarray:
    model = load_checkpoint(checkpoint_path).build_model()
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(rows)), dim=1).numpy()


def _served_probabilities(url: str, rows: np.ndarray, batch: int) -> np.ndarray:
    with InferenceClient(url) as client:
        parts = [
            client.infer(MODEL_NAME, rows[i : i + batch], outputs=["probabilities"])[
                "probabilities"
            ]
            for i in range(0, len(rows), batch)
        ]
    return np.concatenate(parts)


def run_demo(
    workdir: Path, *, epochs: int = 20, progress: bool = True, say: Callable[[str], None] = print
) -> DemoResult:
    start = time.perf_counter()

    def step(text: str) -> None:
        say(f"[{time.perf_counter() - start:5.1f} s] {text}")

    step("1/4 training a BNMLP on the embedded digits data (CPU is fine)")
    trained = train(TrainConfig(epochs=epochs, out_dir=workdir / "train"), progress=progress)
    step(
        f"    best {trained.metric} {trained.best_metric:.4f} at epoch {trained.best_epoch}; "
        f"checkpoint {trained.best_checkpoint}"
    )

    step("2/4 folding batch norm and exporting ONNX into a model repository")
    repository = workdir / "models"
    exported = export_checkpoint(trained.best_checkpoint, repository=repository, name=MODEL_NAME)
    say(exported.format())

    _, val = validation_split(load_checkpoint(trained.best_checkpoint).data_spec)
    rows, labels = val.features, val.targets
    step(f"3/4 starting bnmodel serve and classifying {len(rows)} held-out rows over gRPC")
    with spawn_server(["--model-repository", str(repository)], capture_stderr=False) as server:
        step(f"    {server.ready_line}")
        served = _served_probabilities(server.url, rows, batch=256)
    step("4/4 server stopped")

    expected = _torch_probabilities(trained.best_checkpoint, rows)
    result = DemoResult(
        rows=len(rows),
        torch_accuracy=float((expected.argmax(1) == labels).mean()),
        served_accuracy=float((served.argmax(1) == labels).mean()),
        agreement=float((served.argmax(1) == expected.argmax(1)).mean()),
        max_abs_prob_diff=float(np.abs(served - expected).max()),
        repository=repository,
        seconds=time.perf_counter() - start,
    )
    say(format_result(result))
    return result


def format_result(r: DemoResult) -> str:
    return "\n".join(
        [
            f"held-out rows            {r.rows}",
            f"PyTorch accuracy         {r.torch_accuracy:.4f}   (unfolded model, eval mode)",
            f"served accuracy          {r.served_accuracy:.4f}   (folded ONNX over gRPC)",
            f"same class               {r.agreement:.4f}",
            f"max |p_served - p_torch| {r.max_abs_prob_diff:.2e}",
            f"total time               {r.seconds:.1f} s",
        ]
    )
