"""Predictions for a file of rows through a running server (``bnmodel infer``).

Reads a CSV (optional header) or .npy of feature rows, sends them in chunks of the model's
max_batch_size (one row per request for a model without a batch axis), and gives class +
probabilities for a classifier or values for a regressor. A CSV header picks the model's
feature columns by name, so the training file itself works: its target column (any type) and
other extra columns are ignored.
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
    classes: tuple[str, ...] | None = None  # predicted label per row (classifier); "" for NaN

    @property
    def non_finite_rows(self) -> list[int]:
        """Rows (0-based) whose outputs hold NaN or inf: no class is given for them."""
        return [int(i) for i in np.flatnonzero(~np.isfinite(self.values).all(axis=1))]

    def to_csv(self, stream: TextIO) -> None:
        writer = csv.writer(stream, lineterminator="\n")
        header = (["class"] if self.classes is not None else []) + list(self.columns)
        writer.writerow(header)
        for i, row in enumerate(self.values):
            cells = [f"{v:.6g}" for v in row]
            writer.writerow(([self.classes[i]] if self.classes is not None else []) + cells)


def _cell(text: str, path: Path, column: str, row: int) -> float:
    try:
        return float(text)
    except ValueError:
        shown = repr(text[:32]) if text.strip() else "empty"
        raise InvalidInputError(
            f"{path}: row {row}, column {column}: {shown} is not a number"
        ) from None


def _read_csv(path: Path, names: list[str] | None, width: int) -> np.ndarray:
    """Rows of a CSV; a header (a first row that is not all numbers) selects ``names``.
    ``width``: the model's feature count (0: unknown)."""
    with path.open(newline="") as f:
        lines = [(i, row) for i, row in enumerate(csv.reader(f), start=1) if row]
    if not lines:
        raise InvalidInputError(f"{path}: no rows")
    columns = list(range(len(lines[0][1])))
    labels = [f"{c + 1}" for c in columns]
    first = lines[0][1]
    if not all(_is_number(cell) for cell in first):  # a header
        header = [cell.strip() for cell in first]
        lines = lines[1:]
        wanted = names or header
        missing = [n for n in wanted if n not in header]
        if missing:
            raise InvalidInputError(f"{path}: header lacks the model's columns {missing[:5]}")
        if names is None and width and len(header) != width:
            raise _width_error(path, len(header), width, names)
        columns, labels = [header.index(n) for n in wanted], wanted
    elif width and len(first) != width:
        raise _width_error(path, len(first), width, names)
    rows = np.empty((len(lines), len(columns)), np.float32)
    for r, (number, row) in enumerate(lines):
        if len(row) <= max(columns):
            raise InvalidInputError(f"{path}: row {number} has {len(row)} cells, not enough")
        rows[r] = [_cell(row[c], path, labels[k], number) for k, c in enumerate(columns)]
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _width_error(path: Path, got: int, width: int, names: list[str] | None) -> InvalidInputError:
    expected = f" ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})" if names else ""
    return InvalidInputError(f"{path}: {got} columns, the model expects {width}{expected}")


def read_rows(path: Path, feature_names: list[str] | None = None, width: int = 0) -> np.ndarray:
    """Feature rows [N, F] float32 from .npy or .csv; a CSV header selects ``feature_names``.

    ``width``: the model's feature count (0: not checked)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    if path.suffix not in (".csv", ".npy"):
        raise InvalidInputError(f"{path}: expected a .csv or .npy file")
    if path.suffix == ".csv":
        return _read_csv(path, feature_names, width or len(feature_names or ()))
    try:
        rows = np.atleast_2d(np.load(path, allow_pickle=False)).astype(np.float32, copy=False)
    except ValueError as exc:
        raise InvalidInputError(f"{path}: not a numeric .npy array ({exc})") from None
    if width and rows.shape[-1] != width:
        raise _width_error(path, rows.shape[-1], width, feature_names)
    return rows


def _predictions(config, outputs: dict[str, np.ndarray]) -> Predictions:
    if "probabilities" in outputs:
        probabilities = outputs["probabilities"].astype(np.float32)
        labels = json_parameter(config, "class_labels") or [
            str(i) for i in range(probabilities.shape[1])
        ]
        finite = np.isfinite(probabilities).all(axis=1)
        best = np.where(finite, np.nan_to_num(probabilities).argmax(axis=1), -1)
        classes = tuple(labels[i] if i >= 0 else "" for i in best)
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
    if not Path(input_path).is_file():
        raise InvalidInputError(f"{input_path}: no such file")
    # http:// or https://: the same calls over HTTP (serve/http_client.py); else gRPC.
    connect = HttpInferenceClient if is_http_url(url) else InferenceClient
    with connect(url, timeout=timeout, tls=tls, auth_token=auth_token) as client:
        config = client.model_config(model)
        dims = list(config.input[0].dims) if config.input else []
        width = dims[-1] if dims and dims[-1] > 0 else 0
        rows = read_rows(input_path, json_parameter(config, "feature_names"), width)
        dtype = (
            np.float16
            if config.input and config.input[0].data_type == model_config_pb2.TYPE_FP16
            else np.float32
        )
        wanted = ("probabilities",) if any(o.name == "probabilities" for o in config.output) else ()
        if config.max_batch_size:
            chunk = config.max_batch_size
            parts = [
                client.infer(model, rows[i : i + chunk].astype(dtype), outputs=wanted)
                for i in range(0, len(rows), chunk)
            ]
        else:  # no batch axis: one row, shaped as the model declares it, per request
            parts = [
                client.infer(model, row.astype(dtype).reshape(dims), outputs=wanted) for row in rows
            ]
            parts = [{k: v.reshape(1, -1) for k, v in p.items()} for p in parts]
    outputs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return _predictions(config, outputs)


def write_predictions(predictions: Predictions, output: Path | None) -> str:
    """CSV text of ``predictions``, also written to ``output`` when given."""
    buffer = io.StringIO()
    predictions.to_csv(buffer)
    if output is not None:
        Path(output).write_text(buffer.getvalue())
    return buffer.getvalue()
