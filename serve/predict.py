"""Predictions for a file of rows through a running server (``bnmodel infer``).

Reads a CSV (optional header) or .npy of feature rows, sends them in chunks of the model's
max_batch_size (one row per request for a model without a batch axis), and gives class +
probabilities for a classifier or values for a regressor. A CSV header picks the model's
feature columns by name, so the training file itself works: its target column (any type) and
other extra columns are ignored. A blank, "NA" or "nan" numeric cell is NaN (a missing value,
which a model trained on raw rows imputes).

A raw-row model also takes one BYTES input per categorical column, named after it:
its rows must come from a CSV with a header; the numeric columns named by the config's
``feature_names`` go into ``features`` and each categorical column into its own [N, 1] tensor
of strings, as they are (blank: "").
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
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

__all__ = ["Predictions", "MISSING", "read_rows", "read_table", "predict_file", "write_predictions"]


@dataclass(frozen=True)
class Predictions:
    """``values``: probabilities [N, C] for a classifier, predictions [N, T] for a regressor."""

    task: str  # "classification" or "regression"
    columns: tuple[str, ...]  # one name per column of ``values``
    values: np.ndarray
    classes: tuple[str, ...] | None = None  # predicted label per row (classifier); "" for NaN
    label_column: str = "class"  # the classifier's label column: the training target's name

    @property
    def non_finite_rows(self) -> list[int]:
        """Rows (0-based) whose outputs hold NaN or inf: no class is given for them."""
        return [int(i) for i in np.flatnonzero(~np.isfinite(self.values).all(axis=1))]

    def to_csv(self, stream: TextIO) -> None:
        writer = csv.writer(stream, lineterminator="\n")
        header = ([self.label_column] if self.classes is not None else []) + list(self.columns)
        writer.writerow(header)
        for i, row in enumerate(self.values):
            cells = [f"{v:.6g}" for v in row]
            writer.writerow(([self.classes[i]] if self.classes is not None else []) + cells)


MISSING = frozenset({"", "na", "nan"})  # numeric cells read as NaN (after strip, lower case)


def _cell(text: str, path: Path, column: str, row: int, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        if text.strip().lower() in MISSING:
            return float("nan")
        raise InvalidInputError(
            f"{path}: column {column!r}, row {row} (line {line}): {text[:32]!r} is not a number"
        ) from None


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of every non-empty CSV record."""
    with path.open(newline="") as f:
        lines = [(i, row) for i, row in enumerate(csv.reader(f), start=1) if row]
    if not lines:
        raise InvalidInputError(f"{path}: no rows")
    return lines


def _is_header(cells: list[str]) -> bool:
    """A first row with a cell that is neither a number nor a missing value names columns."""
    return not all(_is_number(c) or c.strip().lower() in MISSING for c in cells)


def _read_csv(path: Path, names: list[str] | None, width: int) -> np.ndarray:
    """Rows of a CSV; a header (a first row that is not all numbers) selects ``names``.
    ``width``: the model's feature count (0: unknown)."""
    lines = _lines(path)
    columns = list(range(len(lines[0][1])))
    labels = [f"{c + 1}" for c in columns]
    first = lines[0][1]
    if _is_header(first):
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
    return _numbers(path, lines, columns, labels)


def _short_line(path: Path, number: int, row: list[str]) -> InvalidInputError:
    return InvalidInputError(f"{path}: line {number} has {len(row)} cells, not enough")


def _numbers(path: Path, lines, columns: list[int], labels: list[str]) -> np.ndarray:
    """[N, len(columns)] float32 of the data ``lines`` ((line number, cells)); rows are
    numbered from 1 in messages, with their line in the file."""
    rows = np.empty((len(lines), len(columns)), np.float32)
    for r, (number, row) in enumerate(lines):
        if len(row) <= max(columns, default=-1):
            raise _short_line(path, number, row)
        rows[r] = [_cell(row[c], path, labels[k], r + 1, number) for k, c in enumerate(columns)]
    return rows


def _strings(path: Path, lines, column: int) -> np.ndarray:
    """[N, 1] object array of the cells of ``column``, as they are ("" for a blank)."""
    values = np.empty((len(lines), 1), dtype=object)
    for r, (number, row) in enumerate(lines):
        if len(row) <= column:
            raise _short_line(path, number, row)
        values[r, 0] = row[column]
    return values


def read_table(
    path: Path, numeric: Sequence[str], categorical: Sequence[str]
) -> dict[str, np.ndarray]:
    """A raw-row model's inputs from a CSV with a header: ``features`` [N, len(numeric)] float32
    (blank, "NA", "nan": NaN; left out when ``numeric`` is empty) and one [N, 1] string array
    per ``categorical`` column, named after it. Other columns are ignored."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    if path.suffix != ".csv":
        raise InvalidInputError(
            f"{path}: the model takes categorical columns ({', '.join(categorical)}): give a "
            ".csv file with a header row naming its columns"
        )
    lines = _lines(path)
    header = [cell.strip() for cell in lines[0][1]]
    wanted = [*numeric, *categorical]
    if not _is_header(lines[0][1]) or not set(wanted) & set(header):
        raise InvalidInputError(
            f"{path}: the first row is no header naming the model's columns "
            f"({', '.join(wanted[:8])}{', ...' if len(wanted) > 8 else ''}); add one"
        )
    for name in wanted:
        if name not in header:
            raise InvalidInputError(f"{path}: no column {name!r}, which the model takes")
    lines = lines[1:]
    if not lines:
        raise InvalidInputError(f"{path}: a header and no rows")
    inputs = {}
    if numeric:
        inputs["features"] = _numbers(path, lines, [header.index(n) for n in numeric], numeric)
    for name in categorical:
        inputs[name] = _strings(path, lines, header.index(name))
    return inputs


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
    """Column names as `bnmodel predict` writes them: the training target's name (config
    parameter target_name, when the export recorded one) heads the label or value columns."""
    target = (
        config.parameters["target_name"].string_value if "target_name" in config.parameters else ""
    )
    if "probabilities" in outputs:
        probabilities = outputs["probabilities"].astype(np.float32)
        labels = json_parameter(config, "class_labels") or [
            str(i) for i in range(probabilities.shape[1])
        ]
        finite = np.isfinite(probabilities).all(axis=1)
        best = np.where(finite, np.nan_to_num(probabilities).argmax(axis=1), -1)
        classes = tuple(labels[i] if i >= 0 else "" for i in best)
        columns = tuple(f"p_{label}" for label in labels)
        return Predictions("classification", columns, probabilities, classes, target or "class")
    name = "predictions" if "predictions" in outputs else next(iter(outputs))
    values = outputs[name].astype(np.float32).reshape(len(outputs[name]), -1)
    targets = target.split(",")  # several regression targets: "a,b"
    if target and len(targets) == values.shape[1]:
        columns = tuple(targets)
    else:
        base = target or name
        columns = (
            tuple(f"{base}_{i}" for i in range(values.shape[1])) if values.shape[1] > 1 else (base,)
        )
    return Predictions("regression", columns, values)


def _table_inputs(model: str, config, path: Path) -> dict[str, np.ndarray]:
    """{input name: array} of a model with string inputs (categorical columns), from a CSV."""
    categorical = [t.name for t in config.input if t.data_type == model_config_pb2.TYPE_STRING]
    numeric = [t for t in config.input if t.data_type != model_config_pb2.TYPE_STRING]
    names = json_parameter(config, "feature_names") or []
    if config.max_batch_size < 1 or len(numeric) > 1:
        raise InvalidInputError(
            f"model {model!r}: string inputs are read from a CSV for a model with a batch axis "
            "and at most one numeric input (features); send this model's tensors yourself"
        )
    if numeric and len(names) != (numeric[0].dims or [0])[-1]:
        raise InvalidInputError(
            f"model {model!r}: its config's feature_names parameter names {len(names)} "
            f"column(s) for input {numeric[0].name!r} of {list(numeric[0].dims)}; cannot tell "
            "which CSV columns go into it"
        )
    table = read_table(path, names if numeric else [], categorical)
    if numeric:
        dtype = np.float16 if numeric[0].data_type == model_config_pb2.TYPE_FP16 else np.float32
        table[numeric[0].name] = table.pop("features").astype(dtype, copy=False)
    return table


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
        wanted = ("probabilities",) if any(o.name == "probabilities" for o in config.output) else ()
        if any(t.data_type == model_config_pb2.TYPE_STRING for t in config.input):
            inputs = _table_inputs(model, config, input_path)
            rows, chunk = len(next(iter(inputs.values()))), config.max_batch_size
            parts = [
                client.infer(
                    model, {k: v[i : i + chunk] for k, v in inputs.items()}, outputs=wanted
                )
                for i in range(0, rows, chunk)
            ]
            outputs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
            return _predictions(config, outputs)
        dims = list(config.input[0].dims) if config.input else []
        width = dims[-1] if dims and dims[-1] > 0 else 0
        rows = read_rows(input_path, json_parameter(config, "feature_names"), width)
        dtype = (
            np.float16
            if config.input and config.input[0].data_type == model_config_pb2.TYPE_FP16
            else np.float32
        )
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
