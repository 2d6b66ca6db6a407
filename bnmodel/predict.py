"""``bnmodel predict``: a file of rows through an exported model on ONNX Runtime, in chunks.

Needs no torch for an ONNX model (the base install): the model's metadata names its feature
columns, task and class labels. A raw-row model (issue 12) also names its categorical columns:
each is read as text (a blank cell is "") and fed as its own string input, and its numeric
columns may hold blanks, "NA" or NaN (missing: the graph imputes them).

Input is streamed: a CSV through pyarrow's streaming reader, Parquet by record batches, NPY
memory-mapped, NPZ by slices, so memory stays flat in the row count; each chunk of
``chunk_rows`` rows is one ``session.run`` and one write.
"""

from __future__ import annotations

import csv
import json
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHUNK_ROWS",
    "INPUT_SUFFIXES",
    "LocalModel",
    "PredictError",
    "PredictSummary",
    "iter_chunks",
    "load_model",
    "load_model_bytes",
    "predict_file",
    "table_columns",
]

CHUNK_ROWS = 65536  # rows per session.run and per write
INPUT_SUFFIXES = (".csv", ".parquet", ".pq", ".npz", ".npy")
OUTPUT_SUFFIXES = (".csv", ".parquet", ".pq")
CSV_BLOCK_BYTES = 4 << 20  # pyarrow's streaming CSV block: ~4 MiB of text at a time


class PredictError(ValueError):
    """The model or the input cannot be used; the message names the file, column and row."""


# --------------------------------------------------------------------------------------------
# The model


@dataclass
class LocalModel:
    """An ONNX Runtime session with what bnmodel's export wrote into the model's metadata."""

    session: Any  # onnxruntime.InferenceSession
    source: str
    task: str  # "classification" or "regression"
    feature_names: list[str]
    class_labels: list[str] | None
    target_name: str | None
    # Raw-row models: one string input per categorical column; numeric NaN means missing.
    categorical_columns: list[str] = field(default_factory=list)
    imputes: bool = False

    @property
    def input_dtype(self) -> type:
        return np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    def run(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """(N, F) rows, or a raw-row model's feed (``iter_chunks``) -> (N, C) probabilities or
        (N, T) predictions, float32."""
        name = "probabilities" if self.task == "classification" else "predictions"
        if isinstance(x, dict):
            feed = dict(x)
            if "features" in feed:
                feed["features"] = feed["features"].astype(self.input_dtype, copy=False)
                if not self.feature_names:
                    del feed["features"]
        else:
            feed = {self.session.get_inputs()[0].name: x.astype(self.input_dtype, copy=False)}
        return np.asarray(self.session.run([name], feed)[0], dtype=np.float32)

    def output_columns(self, width: int) -> list[str]:
        if self.task == "classification":
            return [self.label_column, *(f"p_{label}" for label in self.class_labels or [])]
        base = self.target_name or "prediction"
        names = base.split(",")  # several regression targets: "a,b"
        if len(names) == width:
            return names
        return [base] if width == 1 else [f"{base}_{i}" for i in range(width)]

    @property
    def label_column(self) -> str:
        return self.target_name or "class"

    # Python API: tables in memory (see table_columns) or a file path, predicted in one call.
    def outputs(self, x: Any) -> np.ndarray:
        """(N, C) probabilities or (N, T) predictions, float32, of a DataFrame, pyarrow Table,
        (N, F) array or file of rows."""
        if isinstance(x, (str, os.PathLike)):
            chunks = iter_chunks(
                x,
                self.feature_names,
                categorical=self.categorical_columns,
                allow_missing=self.imputes,
            )
            parts = [self.run(feed) for feed, _ in chunks]
            if not parts:
                raise PredictError(f"input {x} has no data rows")
            return np.concatenate(parts)
        numeric, categories = table_columns(
            x, self.feature_names, self.categorical_columns, allow_missing=self.imputes
        )
        if not self.categorical_columns:
            return self.run(numeric)
        feed = {"features": numeric}
        feed.update({c: categories[:, i : i + 1] for i, c in enumerate(self.categorical_columns)})
        return self.run(feed)

    def predict(self, x: Any) -> Any:
        """A pandas DataFrame headed as ``bnmodel predict`` writes: the class and p_LABEL
        columns, or the predicted values; a DataFrame's index is kept."""
        frame = _table(self, self.outputs(x)).to_pandas()
        if hasattr(x, "index") and not isinstance(x, np.ndarray) and len(x.index) == len(frame):
            frame.index = x.index
        return frame

    def predict_proba(self, x: Any) -> Any:
        """A classifier's p_LABEL columns of ``predict``."""
        if self.task != "classification":
            raise PredictError(
                f"model {self.source} is a regressor; predict_proba needs a classifier"
            )
        return self.predict(x).drop(columns=[self.label_column])


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
    if "bnmodel.task" not in meta:
        raise PredictError(
            f"model {source} has no bnmodel metadata (feature names, task); export it with "
            "bnmodel export"
        )
    labels = json.loads(meta.get("bnmodel.class_labels", "[]")) or None
    return LocalModel(
        session=session,
        source=source,
        task=meta["bnmodel.task"],
        feature_names=json.loads(meta["bnmodel.feature_names"]),
        class_labels=labels,
        target_name=meta.get("bnmodel.target_name") or None,
        categorical_columns=json.loads(meta.get("bnmodel.categorical_columns", "[]")),
        imputes="bnmodel.preprocessing" in meta,
    )


# --------------------------------------------------------------------------------------------
# Reading rows in chunks


Block = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]  # features, categories, target


def iter_chunks(
    path: str | os.PathLike[str],
    feature_names: list[str],
    chunk_rows: int = CHUNK_ROWS,
    target: str | None = None,
    *,
    categorical: Sequence[str] = (),
    allow_missing: bool = False,
) -> Iterator[tuple[np.ndarray | dict[str, np.ndarray], np.ndarray | None]]:
    """(features (n, F) float32, target values (n,) or None) for consecutive rows of a file.

    Feature columns are picked by name (others, the target among them, are ignored); with
    ``target``, its raw values come along (text for CSV). A missing or non-numeric cell is an
    error naming the column and row. A raw-row model: ``categorical`` columns come as text
    (blank = ""), and the first element is the model's feed {"features": (n, F), column:
    (n, 1) object, ...}; ``allow_missing``: a blank, "NA" or NaN numeric cell is NaN.
    """
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise PredictError(f"input {path}: unknown format {suffix!r}; expected {INPUT_SUFFIXES}")
    categorical = list(categorical)
    if suffix in (".npz", ".npy"):
        if categorical:
            raise PredictError(
                f"input {path}: the model has categorical columns {categorical[:5]}; give a "
                "CSV or Parquet file with a header naming the columns"
            )
        blocks = _array_blocks(path, len(feature_names), chunk_rows, target, allow_missing)
    else:
        blocks = _table_blocks(path, feature_names, categorical, target, allow_missing)
    for x, cats, y in _rechunk(blocks, chunk_rows):
        if not categorical:
            yield x, y
            continue
        feed = {"features": x}
        feed.update({name: cats[:, i : i + 1] for i, name in enumerate(categorical)})
        yield feed, y


def _concat(parts: list[np.ndarray | None]) -> np.ndarray | None:
    return None if parts[0] is None else np.concatenate(parts)


def _rechunk(blocks: Iterator[Block], chunk_rows: int) -> Iterator[Block]:
    """Blocks of any size -> chunks of exactly chunk_rows rows (the last may be shorter)."""
    pending: list[Block] = []
    count = 0
    for block in blocks:
        pending.append(block)
        count += len(block[0])
        while count >= chunk_rows:
            joined = [_concat([p[k] for p in pending]) for k in range(3)]
            yield tuple(None if a is None else a[:chunk_rows] for a in joined)  # type: ignore[misc]
            pending = [tuple(None if a is None else a[chunk_rows:] for a in joined)]  # type: ignore[list-item]
            count -= chunk_rows
    if count:
        yield tuple(_concat([p[k] for p in pending]) for k in range(3))  # type: ignore[misc]


def _table_blocks(
    path: Path, names: list[str], categorical: list[str], target: str | None, allow_missing: bool
) -> Iterator[Block]:
    import pyarrow as pa

    targets = _target_names(target)
    columns = [*names, *categorical, *targets]
    csv_file = path.suffix == ".csv"
    batches = _csv_batches(path, names, categorical, targets, allow_missing) if csv_file else None
    if batches is None:
        batches = _parquet_batches(path, columns, categorical)
    row = 0
    try:
        for batch in batches:
            yield _block(batch, names, categorical, targets, path, row, allow_missing)
            row += batch.num_rows
    except pa.ArrowInvalid as exc:  # a cell that is not a number, a short row
        found = _locate_bad_cell(path, names, allow_missing)
        raise PredictError(found or f"input {path}: {exc}") from None


def _target_names(target: str | None) -> list[str]:
    """No target, one column, or several regression targets written "a,b"."""
    return [] if not target else [t.strip() for t in target.split(",")]


def _csv_batches(
    path: Path, names: list[str], categorical: list[str], targets: list[str], allow_missing: bool
) -> Iterator[Any]:
    import pyarrow as pa
    from pyarrow import csv as pa_csv

    header = _csv_header(path)
    _check_columns(path, header, [*names, *categorical, *targets])
    from bnmodel.encoding import CSV_TEXT_TYPE

    types = {name: pa.float32() for name in names}
    # Text as written: a blank categorical cell is "" (strings are never null by default).
    types.update({t: pa.string() for t in targets})
    types.update({c: CSV_TEXT_TYPE() for c in categorical})
    convert = pa_csv.ConvertOptions(
        column_types=types, include_columns=[*names, *categorical, *targets]
    )
    read = pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES)
    parse = pa_csv.ParseOptions()
    try:
        reader = pa_csv.open_csv(
            path, read_options=read, parse_options=parse, convert_options=convert
        )
    except pa.ArrowInvalid as exc:
        raise PredictError(
            _locate_bad_cell(path, names, allow_missing) or f"input {path}: {exc}"
        ) from None
    yield from reader


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise PredictError(f"input {path} is empty (no header row)")
    return [h.strip() for h in header]


def _parquet_batches(
    path: Path, columns: list[str], categorical: Sequence[str] = ()
) -> Iterator[Any]:
    import pyarrow.parquet as pq

    try:
        # Categorical columns as dictionaries where the file stores them so: their text is
        # then built per distinct value, not per row (encoding.category_text).
        file = pq.ParquetFile(path, read_dictionary=list(categorical))
    except Exception as exc:  # pyarrow raises ArrowInvalid or OSError for a bad file
        raise PredictError(f"input {path} is not a readable Parquet file: {exc}") from None
    _check_columns(path, file.schema_arrow.names, columns)
    yield from file.iter_batches(batch_size=CHUNK_ROWS, columns=columns)


def _check_columns(path: Path, header: list[str], names: list[str]) -> None:
    missing = [n for n in names if n not in header]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise PredictError(
            f"input {path}: column(s) {missing[:5]}{more} missing; needed: "
            f"{names[:8]}{' ...' if len(names) > 8 else ''}"
        )


def _block(
    batch: Any,
    names: list[str],
    categorical: list[str],
    targets: list[str],
    path: Path,
    first_row: int,
    allow_missing: bool,
) -> Block:
    """A record batch as (n, F) float32 features (NaN for missing when allowed, else an
    error), (n, C) categorical text or None, and raw target values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = []
    for name in names:
        col = batch.column(name)
        if col.null_count and not allow_missing:
            row = first_row + int(pc.index(pc.is_null(col), True).as_py())
            raise PredictError(
                f"input {path}: column {name!r}, {_row(path, row)}: value is missing (the "
                "model was trained without missing values, so it does not impute)"
            )
        col = col.cast(pa.float32()) if col.type != pa.float32() else col
        columns.append(col.to_numpy(zero_copy_only=False))
    x = np.column_stack(columns) if columns else np.empty((batch.num_rows, 0), np.float32)
    bad = np.isinf(x) if allow_missing else ~np.isfinite(x)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise PredictError(
            f"input {path}: column {names[c]!r}, {_row(path, first_row + r)}: "
            f"{x[r, c]} is not a finite number"
        )
    cats = None
    if categorical:
        cats = np.stack([_text(batch.column(c), path) for c in categorical], axis=1)
    y = None
    if targets:  # (n,) for one target, (n, T) for several
        cols = [np.asarray(batch.column(t).to_pylist(), dtype=object) for t in targets]
        y = cols[0] if len(cols) == 1 else np.stack(cols, axis=1)
    return x, cats, y


def _text(column: Any, path: Path) -> np.ndarray:
    """A categorical column as the text training saw (encoding.category_text): a CSV cell as
    written, leading spaces dropped as training's reader does; a typed Parquet column cast."""
    from bnmodel.encoding import category_text, csv_category_text

    return csv_category_text(column) if path.suffix == ".csv" else category_text(column)


def _row(path: Path, row: int) -> str:
    """Data rows count from 1; in a CSV, data row r is line r + 1 (the header is line 1)."""
    return f"row {row + 1} (line {row + 2})" if path.suffix == ".csv" else f"row {row + 1}"


# What pyarrow's CSV reader (and pandas) read as a missing number.
MISSING_TOKENS = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "n/a",
        "nan",
        "null",
    }
)


def _locate_bad_cell(path: Path, names: list[str], allow_missing: bool = False) -> str | None:
    """The first non-numeric feature cell or short row of a CSV (the error path only)."""
    if path.suffix != ".csv":
        return None
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        index = {name: header.index(name) for name in names}
        for row, cells in enumerate(reader):
            if len(cells) != len(header):
                return (
                    f"input {path}: {_row(path, row)} has {len(cells)} cells, the header "
                    f"{len(header)}"
                )
            for name, i in index.items():
                cell = cells[i].strip()
                if allow_missing and cell in MISSING_TOKENS:
                    continue
                try:
                    float(cell)
                except ValueError:
                    what = "value is missing" if not cell else f"{cells[i]!r} is not a number"
                    return f"input {path}: column {name!r}, {_row(path, row)}: {what}"
    return None


def _array_blocks(
    path: Path, width: int, chunk_rows: int, target: str | None, allow_missing: bool = False
) -> Iterator[Block]:
    """NPY (memory-mapped) or NPZ (X or features, and the target array) in slices."""
    y = None
    if path.suffix == ".npy":
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    else:
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in ("X", "features") if k in archive.files), None)
            if key is None:
                raise PredictError(
                    f"input {path}: no array 'X' or 'features'; found {archive.files}"
                )
            x = archive[key]
            if target:
                y_key = target if target in archive.files else "y"
                if y_key not in archive.files:
                    raise PredictError(f"input {path}: no target array {target!r} or 'y'")
                y = archive[y_key]
    x = np.atleast_2d(x) if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[1] != width:
        raise PredictError(f"input {path}: array is {x.shape}, the model needs (N, {width})")
    for lo in range(0, len(x), chunk_rows):
        block = np.asarray(x[lo : lo + chunk_rows], dtype=np.float32)
        bad = np.isinf(block) if allow_missing else ~np.isfinite(block)
        if bad.any():
            r, c = (int(i) for i in np.argwhere(bad)[0])
            raise PredictError(f"input {path}: column {c}, row {lo + r + 1}: not a finite number")
        yield block, None, None if y is None else y[lo : lo + chunk_rows]


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


def _table(model: LocalModel, out: np.ndarray) -> Any:
    import pyarrow as pa

    names = model.output_columns(out.shape[1])
    if model.task == "classification":
        labels = np.asarray(
            model.class_labels or [str(i) for i in range(out.shape[1])], dtype=object
        )
        arrays = [pa.array(labels[out.argmax(axis=1)], type=pa.string())]
        arrays += [pa.array(out[:, i]) for i in range(out.shape[1])]
    else:
        arrays = [pa.array(out[:, i]) for i in range(out.shape[1])]
    return pa.Table.from_arrays(arrays, names=names)


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
    start = time.perf_counter()
    try:
        chunks = iter_chunks(
            input_path,
            model.feature_names,
            chunk_rows,
            categorical=model.categorical_columns,
            allow_missing=model.imputes,
        )
        for x, _ in _prefetched(chunks):
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
    return PredictSummary(rows, time.perf_counter() - start, output_path, columns)


# --------------------------------------------------------------------------------------------
# Tables in memory (the Python API)


def load_model_bytes(model_bytes: bytes, source: str) -> LocalModel:
    """An exported model held in memory (``source`` names it in messages)."""
    return _session(model_bytes, source)


def table_columns(
    table: Any,
    feature_names: Sequence[str],
    categorical: Sequence[str] = (),
    *,
    allow_missing: bool = False,
    where: str = "DataFrame",
) -> tuple[np.ndarray, np.ndarray | None]:
    """(numeric (N, F) float32, categorical text (N, C) object or None) of a pandas DataFrame,
    a pyarrow Table or an (N, F) array, by the rules training applied to a DataFrame.

    Columns are picked by name (others are ignored); an array's columns are the features in
    order. A numeric cell may be a number, or a blank, NaN, None or missing token (NaN, when
    ``allow_missing``); anything else is an error naming the column and row. Categorical
    cells become text as training made it (``encoding.category_text``; missing is "").
    """
    import pyarrow as pa

    if isinstance(table, pa.Table):
        table = table.to_pandas()
    if not hasattr(table, "columns"):
        return _array_columns(np.asarray(table), list(feature_names), categorical, allow_missing)
    from bnmodel.encoding import category_text

    columns = [str(c) for c in table.columns]
    _check_columns(Path(where), columns, [*feature_names, *categorical])
    frame = table.set_axis(columns, axis=1)
    numeric = [_numeric_cells(frame[n], n, where, allow_missing) for n in feature_names]
    x = np.stack(numeric, axis=1) if numeric else np.empty((len(frame), 0), np.float32)
    cats = None
    if categorical:
        cats = np.stack([category_text(frame[c]) for c in categorical], axis=1)
    return x, cats


def _array_columns(
    x: np.ndarray, names: list[str], categorical: Sequence[str], allow_missing: bool
) -> tuple[np.ndarray, None]:
    if categorical:
        raise PredictError(
            f"the model has categorical columns {list(categorical)[:5]}; give a DataFrame with "
            "named columns, not an array"
        )
    if x.ndim != 2 or x.shape[1] != len(names):
        raise PredictError(f"input array is {x.shape}, the model needs (N, {len(names)})")
    import pandas as pd

    frame = pd.DataFrame(x, columns=names)
    cells = [_numeric_cells(frame[n], n, "array", allow_missing) for n in names]
    return (np.stack(cells, axis=1) if cells else np.empty((len(x), 0), np.float32)), None


def _numeric_cells(series: Any, name: str, where: str, allow_missing: bool) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce")
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        token = series.map(lambda v: isinstance(v, str) and v.strip() in MISSING_TOKENS)
        bad = (values.isna() & series.notna() & ~token.astype(bool)).to_numpy()
        if bad.any():
            row = int(np.argmax(bad))
            raise PredictError(
                f"{where}: column {name!r}, row {row + 1}: {series.iloc[row]!r} is not a number"
            )
    out = values.to_numpy(dtype=np.float64, na_value=np.nan).astype(np.float32)
    bad = np.isinf(out) if allow_missing else ~np.isfinite(out)
    if bad.any():
        row = int(np.argmax(bad))
        what = (
            f"{out[row]} is not a finite number"
            if not np.isnan(out[row])
            else "value is missing (the model was trained without missing values, so it does "
            "not impute)"
        )
        raise PredictError(f"{where}: column {name!r}, row {row + 1}: {what}")
    return out
