"""``bnmodel predict``: a file of rows through an exported model on ONNX Runtime, in chunks.

Needs no torch for an ONNX model (the base install): the model's metadata holds its data
contract (``bnmodel.contract``: feature columns, task, class labels, categorical columns).
Rows are read by ``bnmodel.table`` (the reader training, evaluate and ``bnmodel infer`` use,
with the same cell rules): streamed, so memory stays flat in the row count; each chunk of
``chunk_rows`` rows is one ``session.run`` and one write.

``LocalModel`` is also the Python API's local predictor: ``outputs``, ``predict`` and
``predict_proba`` take a DataFrame, a pyarrow Table, an ndarray or a path.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnmodel import table
from bnmodel.contract import ContractError, ModelContract
from bnmodel.unseen import UnseenText

__all__ = [
    "CHUNK_ROWS",
    "INPUT_SUFFIXES",
    "LocalModel",
    "PredictError",
    "PredictSummary",
    "iter_chunks",
    "load_model",
    "prediction_columns",
    "predictions_frame",
    "load_model_bytes",
    "predict_file",
    "table_columns",
]

CHUNK_ROWS = table.CHUNK_ROWS  # rows per session.run and per write
INPUT_SUFFIXES = table.INPUT_SUFFIXES
OUTPUT_SUFFIXES = (".csv", ".parquet", ".pq")


class PredictError(table.TableError):
    """The model or the input cannot be used; the message names the file, column and row."""


# --------------------------------------------------------------------------------------------
# The model


@dataclass
class LocalModel:
    """An ONNX Runtime session and the data contract its metadata holds."""

    session: Any  # onnxruntime.InferenceSession
    source: str
    contract: ModelContract

    # The contract's fields, as lists (what callers of this class have always read).
    @property
    def task(self) -> str:
        return self.contract.task

    @property
    def feature_names(self) -> list[str]:
        return list(self.contract.feature_names)

    @property
    def categorical_columns(self) -> list[str]:
        return list(self.contract.categorical_columns)

    @property
    def class_labels(self) -> list[str] | None:
        labels = self.contract.class_labels
        return None if labels is None else list(labels)

    @property
    def target_name(self) -> str | None:
        return self.contract.target_name

    @property
    def imputes(self) -> bool:
        return bool(self.contract.imputes)

    @property
    def label_column(self) -> str:
        return self.contract.label_column

    def output_columns(self, width: int) -> list[str]:
        return list(self.contract.output_columns(width))

    @property
    def input_dtype(self) -> type:
        return np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    def run(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """(N, F) rows, or the model's inputs (``Chunk.inputs``) -> (N, C) probabilities or
        (N, T) predictions, float32."""
        if isinstance(x, dict):
            feed = dict(x)
            if "features" in feed:
                feed["features"] = feed["features"].astype(self.input_dtype, copy=False)
                if not self.feature_names:
                    del feed["features"]
        else:
            feed = {self.session.get_inputs()[0].name: x.astype(self.input_dtype, copy=False)}
        out = self.session.run([self.contract.output_name], feed)[0]
        return np.asarray(out, dtype=np.float32)

    # The Python API: X is a DataFrame, a pyarrow Table, an ndarray or a file path.

    def outputs(self, x: Any, *, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
        """Probabilities [N, C] (classifier) or predictions [N, T] (regressor), float32."""
        parts = [self.run(feed) for feed in _feeds(self.contract, x, chunk_rows)]
        if not parts:
            raise PredictError(f"input {_name(x)} has no data rows")
        return np.concatenate(parts)

    def predict(self, x: Any) -> Any:
        """A pandas DataFrame headed as ``bnmodel predict`` heads its output: the label column
        (classifier) or the target columns (regressor)."""
        return predictions_frame(self.contract, self.outputs(x), "predict", x)

    def predict_proba(self, x: Any) -> Any:
        """A classifier's p_LABEL columns as a pandas DataFrame."""
        return predictions_frame(self.contract, self.outputs(x), "predict_proba", x)


def load_model(spec: str | os.PathLike[str]) -> LocalModel:
    """A checkpoint (.pt, needs torch), an ONNX file, or a model folder in a repository."""
    path = Path(spec)
    if path.is_dir():
        path = _repository_model(path)
    if not path.is_file():
        raise PredictError(f"model {spec} does not exist")
    if path.suffix == ".pt":
        return _from_checkpoint(path)
    return _session(path.read_bytes(), str(path))


def _repository_model(folder: Path) -> Path:
    """DIR/NAME (highest numeric VERSION/model.onnx) or DIR/NAME/VERSION."""
    if (folder / "model.onnx").is_file():
        return folder / "model.onnx"
    versions = sorted(
        (
            int(p.name)
            for p in folder.iterdir()
            if p.name.isdigit() and (p / "model.onnx").is_file()
        ),
    )
    if not versions:
        raise PredictError(
            f"model folder {folder} holds no VERSION/model.onnx (expected a repository model "
            "folder such as models/NAME)"
        )
    return folder / str(versions[-1]) / "model.onnx"


def _from_checkpoint(path: Path) -> LocalModel:
    """Export the checkpoint to ONNX in memory (folded, unverified) and load that."""
    from bnmodel.export.api import export_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_checkpoint(path, output=onnx_path, verify=False)
        return _session(onnx_path.read_bytes(), str(path))


def _session(model_bytes: bytes, source: str) -> LocalModel:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise PredictError(f"model {source} is not a loadable ONNX model: {exc}") from None
    meta = session.get_modelmeta().custom_metadata_map
    try:
        contract = ModelContract.from_metadata(meta, f"model {source}")
    except ContractError as exc:
        raise PredictError(str(exc)) from None
    return LocalModel(session=session, source=source, contract=contract)


# --------------------------------------------------------------------------------------------
# Reading rows in chunks


def iter_chunks(
    source: Any,
    feature_names: list[str],
    chunk_rows: int = CHUNK_ROWS,
    target: str | None = None,
    *,
    categorical: Sequence[str] = (),
    allow_missing: bool = False,
    role: str = "input",
    dates: Sequence[str] = (),
) -> Iterator[tuple[np.ndarray | dict[str, np.ndarray], np.ndarray | None]]:
    """(model inputs, raw target cells or None) for consecutive rows of ``source``, read by
    ``bnmodel.table`` (its cell rules). The inputs are (n, F) float32 for a model without
    categorical or date columns, else {"features": (n, F), column: (n, 1), ...}."""
    contract = ModelContract(
        "regression",
        tuple(feature_names),
        tuple(categorical),
        imputes=allow_missing,
        date_columns=tuple(dates),
    )
    try:
        for chunk in table.iter_chunks(
            source,
            feature_names,
            categorical,
            target,
            chunk_rows=chunk_rows,
            allow_missing=allow_missing,
            role=role,
            dates=dates,
        ):
            feed = chunk.inputs(contract) if categorical or dates else chunk.features
            yield feed, chunk.targets
    except PredictError:
        raise
    except table.TableError as exc:
        raise PredictError(str(exc)) from None


def _feeds(contract: ModelContract, x: Any, chunk_rows: int) -> Iterator[Any]:
    chunks = iter_chunks(
        x,
        list(contract.feature_names),
        chunk_rows,
        categorical=contract.categorical_columns,
        allow_missing=bool(contract.imputes),
        dates=contract.date_columns,
    )
    for feed, _ in chunks:
        yield feed


def _name(x: Any) -> str:
    return str(x) if isinstance(x, (str, os.PathLike)) else type(x).__name__


# --------------------------------------------------------------------------------------------
# Writing predictions


class _Writer:
    """CSV or Parquet, one chunk at a time (pyarrow's incremental writers)."""

    def __init__(self, path: Path, shown: Path) -> None:
        """Writes to ``path`` (a temporary name); messages name ``shown``, the real output."""
        suffix = shown.suffix.lower()
        if suffix not in OUTPUT_SUFFIXES:
            raise PredictError(
                f"output {shown}: unknown format {suffix!r}; expected .csv or .parquet"
            )
        if not shown.parent.is_dir():
            raise PredictError(f"output {shown}: folder {shown.parent} does not exist")
        self.path, self.shown, self.parquet, self._writer = path, shown, suffix != ".csv", None

    def write(self, table: Any) -> None:
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        if self._writer is None:
            try:
                if self.parquet:
                    self._writer = pq.ParquetWriter(self.path, table.schema)
                else:
                    self._writer = pa_csv.CSVWriter(self.path, table.schema)
            except OSError as exc:
                raise PredictError(f"output {self.shown} cannot be written: {exc}") from None
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def prediction_columns(contract: ModelContract, out: np.ndarray) -> dict[str, np.ndarray]:
    """{column: (N,) values} of a prediction table, in order: a classifier's label (the most
    probable class; "" for a row whose outputs are not finite), then p_LABEL per class; a
    regressor's target columns. ``out``: probabilities [N, C] or predictions [N, T]."""
    out = np.asarray(out, dtype=np.float32).reshape(len(out), -1)
    names = contract.output_columns(out.shape[1])
    values = [out[:, i] for i in range(out.shape[1])]
    if contract.is_classifier:
        labels = np.asarray([*contract.labels(out.shape[1]), ""], dtype=object)
        finite = np.isfinite(out).all(axis=1)
        best = np.where(finite, np.nan_to_num(out).argmax(axis=1), len(labels) - 1)
        values = [labels[best], *values]
    return dict(zip(names, values, strict=True))


def predictions_frame(
    contract: ModelContract, out: np.ndarray, method: str = "all", rows: Any = None
) -> Any:
    """A pandas DataFrame of ``prediction_columns``: "predict" keeps the label (classifier)
    or the values (regressor), "predict_proba" the p_LABEL columns, "all" every column.
    ``rows``: the input; a DataFrame's index is kept, so answers line up with its rows."""
    import pandas as pd

    columns = prediction_columns(contract, out)
    names = list(columns)
    if method == "predict" and contract.is_classifier:
        names = names[:1]
    elif method == "predict_proba":
        if not contract.is_classifier:
            raise PredictError("predict_proba: the model is a regressor; it gives no probabilities")
        names = names[1:]
    index = rows.index if isinstance(rows, pd.DataFrame) and len(rows) == len(out) else None
    return pd.DataFrame({name: columns[name] for name in names}, index=index)


def _table(model: LocalModel, out: np.ndarray) -> Any:
    import pyarrow as pa

    columns = prediction_columns(model.contract, out)
    arrays = [
        pa.array(v, type=pa.string()) if v.dtype == object else pa.array(v)
        for v in columns.values()
    ]
    return pa.Table.from_arrays(arrays, names=list(columns))


def _prefetched(chunks: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Read and parse the next chunks in a thread while this one runs (pyarrow and ONNX Runtime
    both release the GIL); at most ``depth`` chunks wait, so memory stays bounded. An error in
    the reader is raised here, in order."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        """Wait for room, unless the consumer has gone (then drop it and say so)."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(("chunk", chunk)):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    thread = threading.Thread(target=produce, name="bnmodel-predict-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class PredictSummary:
    rows: int
    seconds: float
    output: Path
    columns: list[str]
    # One line per categorical column with many cells in the "other" slot (bnmodel.unseen).
    warnings: tuple[str, ...] = ()

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def predict_file(
    model: LocalModel | str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    chunk_rows: int = CHUNK_ROWS,
) -> PredictSummary:
    """Predict every row of ``input_path`` into ``output_path`` (CSV or Parquet), in chunks.

    On an error nothing is left at ``output_path`` (it is written under a temporary name).
    """
    if chunk_rows < 1:
        raise PredictError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    model = model if isinstance(model, LocalModel) else load_model(model)
    output_path = Path(output_path)
    tmp = output_path.with_name(f".{output_path.name}.partial")
    writer, rows, columns = _Writer(tmp, output_path), 0, []
    unseen = UnseenText(model.contract)
    start = time.perf_counter()
    try:
        chunks = iter_chunks(
            input_path,
            model.feature_names,
            chunk_rows,
            categorical=model.categorical_columns,
            allow_missing=model.imputes,
            dates=model.contract.date_columns,
        )
        for x, _ in _prefetched(_counted(chunks, unseen)):
            table = _table(model, model.run(x))
            writer.write(table)
            rows, columns = rows + table.num_rows, table.column_names
        writer.close()
        if rows == 0:
            raise PredictError(f"input {input_path} has no data rows")
        os.replace(tmp, output_path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return PredictSummary(rows, seconds, output_path, columns, tuple(unseen.warnings()))


def _counted(chunks: Iterator[Any], unseen: UnseenText) -> Iterator[Any]:
    """The chunks, each counted for unseen text as it passes (in the reader thread)."""
    for chunk in chunks:
        unseen.add(chunk[0])
        yield chunk


# --------------------------------------------------------------------------------------------
# Tables in memory (the Python API)


def load_model_bytes(model_bytes: bytes, source: str) -> LocalModel:
    """An exported model held in memory (``source`` names it in messages)."""
    return _session(model_bytes, source)


def table_columns(
    x: Any,
    feature_names: Sequence[str],
    categorical: Sequence[str] = (),
    *,
    allow_missing: bool = False,
    dates: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(numeric (N, F) float32, categorical text (N, C) object or None, date seconds (N, D)
    float64 or None) of a DataFrame, a pyarrow Table, an (N, F) array or a file, read by
    ``bnmodel.table`` as every path reads."""
    chunks = list(
        table.iter_chunks(
            x, list(feature_names), tuple(categorical), allow_missing=allow_missing, dates=dates
        )
    )
    if not chunks:
        raise PredictError(f"input {_name(x)} has no data rows")
    numeric = np.concatenate([c.features for c in chunks])
    categories = np.concatenate([c.categories for c in chunks]) if categorical else None
    seconds = np.concatenate([c.dates for c in chunks]) if dates else None
    return numeric, categories, seconds
