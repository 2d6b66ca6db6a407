"""Predictions for a file of rows through a running server (``bnmodel infer``).

Reads a CSV (optional header) or .npy of feature rows, sends them in chunks of the model's
max_batch_size, and gives class + probabilities for a classifier or values for a regressor.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from .client import InferenceClient
from .errors import InvalidInputError
from .http_client import HttpInferenceClient, is_http_url
from .proto import model_config_pb2
from .repository import json_parameter
from .security import TLSFiles

__all__ = ["Predictions", "read_rows", "predict_file", "write_predictions"]


@dataclass(frozen=True)
class Predictions:
    """``values``: probabilities [N, C] for a classifier, predictions [N, T] for a regressor."""

    task: str  # "classification" or "regression"
    columns: tuple[str, ...]  # one name per column of ``values``
    values: np.ndarray
    classes: tuple[str, ...] | None = None  # predicted label per row (classifier)

    def to_csv(self, stream: TextIO) -> None:
        writer = csv.writer(stream, lineterminator="\n")
        header = (["class"] if self.classes is not None else []) + list(self.columns)
        writer.writerow(header)
        for i, row in enumerate(self.values):
            cells = [f"{v:.6g}" for v in row]
            writer.writerow(([self.classes[i]] if self.classes is not None else []) + cells)


def _parse_csv(path: Path) -> tuple[list[str] | None, np.ndarray]:
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise InvalidInputError(f"{path}: no rows")
    header = None
    try:
        float(rows[0][0])
    except ValueError:
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    try:
        return header, np.asarray(rows, dtype=np.float32)
    except ValueError:
        raise InvalidInputError(
            f"{path}: every row must have the same number of numeric cells"
        ) from None


def read_rows(path: Path, feature_names: list[str] | None = None) -> np.ndarray:
    """Feature rows [N, F] float32 from .npy or .csv; a CSV header selects ``feature_names``."""
    path = Path(path)
    if path.suffix == ".npy":
        rows = np.load(path, allow_pickle=False)
        return np.atleast_2d(rows).astype(np.float32, copy=False)
    if path.suffix != ".csv":
        raise InvalidInputError(f"{path}: expected a .csv or .npy file")
    header, rows = _parse_csv(path)
    if header is None or feature_names is None:
        return rows
    missing = [name for name in feature_names if name not in header]
    if missing:
        raise InvalidInputError(f"{path}: header lacks feature columns {missing[:5]}")
    return rows[:, [header.index(name) for name in feature_names]]


def _predictions(config, outputs: dict[str, np.ndarray]) -> Predictions:
    if "probabilities" in outputs:
        probabilities = outputs["probabilities"].astype(np.float32)
        labels = json_parameter(config, "class_labels") or [
            str(i) for i in range(probabilities.shape[1])
        ]
        classes = tuple(labels[i] for i in probabilities.argmax(axis=1))
        columns = tuple(f"p_{label}" for label in labels)
        return Predictions("classification", columns, probabilities, classes)
    name = "predictions" if "predictions" in outputs else next(iter(outputs))
    values = outputs[name].astype(np.float32).reshape(len(outputs[name]), -1)
    columns = (
        tuple(f"{name}_{i}" for i in range(values.shape[1])) if values.shape[1] > 1 else (name,)
    )
    return Predictions("regression", columns, values)


def predict_file(
    url: str,
    model: str,
    input_path: Path,
    *,
    timeout: float = 30.0,
    tls: TLSFiles | None = None,
    auth_token: str | None = None,
) -> Predictions:
    """Send the rows of ``input_path`` to ``model`` at ``url`` and collect the predictions."""
    # http:// or https://: the same calls over HTTP (serve/http_client.py); else gRPC.
    connect = HttpInferenceClient if is_http_url(url) else InferenceClient
    with connect(url, timeout=timeout, tls=tls, auth_token=auth_token) as client:
        config = client.model_config(model)
        rows = read_rows(input_path, json_parameter(config, "feature_names"))
        dtype = (
            np.float16
            if config.input and config.input[0].data_type == model_config_pb2.TYPE_FP16
            else np.float32
        )
        chunk = config.max_batch_size or len(rows)
        wanted = ("probabilities",) if any(o.name == "probabilities" for o in config.output) else ()
        parts = [
            client.infer(model, rows[i : i + chunk].astype(dtype), outputs=wanted)
            for i in range(0, len(rows), chunk)
        ]
    outputs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return _predictions(config, outputs)


def write_predictions(predictions: Predictions, output: Path | None) -> str:
    """CSV text of ``predictions``, also written to ``output`` when given."""
    buffer = io.StringIO()
    predictions.to_csv(buffer)
    if output is not None:
        Path(output).write_text(buffer.getvalue())
    return buffer.getvalue()
