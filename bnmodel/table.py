"""One table reader for every path: training, local predict, evaluate, INT8 calibration, infer.

Sources: CSV-like text (.csv, .tsv, .txt; comma, tab, semicolon or pipe, detected), compressed
(.gz, .zst, .bz2), Parquet, NPZ / NPY, and in memory a pandas DataFrame, a pyarrow Table or a
numpy array. Files stream in chunks (pyarrow's streaming CSV reader, Parquet record batches,
NPY memory-mapped), so memory stays flat in the row count.

The cell rules, the same on every path:

    every cell      surrounding whitespace is dropped (" red " is "red", " 1.5" is 1.5)
    missing         a cell that is one of MISSING_TOKENS (after trimming): NaN in a numeric
                    column, "" (the "other" slot) in a categorical one, None as a target
    numeric         a number as Arrow parses it ("1e3", "inf"; "inf" is then refused as not
                    finite); anything else is an error naming the file, column, row and line
    categorical     text as written (after trimming), unicode kept; the bool spellings
                    true/True/TRUE and false/False/FALSE are "True" and "False", as a typed
                    bool column casts
    date            seconds since 1970-01-01 00:00 UTC (float64, NaN for missing): ISO 8601
                    text (2024-01-31, 2024-01-31 08:15, 2024-01-31T08:15:00.5+02:00; a time
                    with a zone offset or Z is converted to UTC, one without is taken as
                    written), a typed date or timestamp, or a number (already seconds)
    quoting         CSV quoting: "red, or so" is one cell

``iter_chunks`` gives ``Chunk``s (features, categorical text, raw targets); ``Chunk.inputs``
turns one into the model's input tensors for a ``ModelContract``. pandas is imported only for
a DataFrame source or ``LoadedTable.to_pandas``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from bnmodel.contract import ModelContract

__all__ = [
    "CHUNK_ROWS",
    "DELIMITERS",
    "INPUT_SUFFIXES",
    "MISSING_TOKENS",
    "Chunk",
    "CsvLayout",
    "FileFormat",
    "LoadedTable",
    "TableError",
    "category_text",
    "csv_layout",
    "date_seconds",
    "file_format",
    "is_missing",
    "iter_chunks",
    "label_text",
    "load_table",
    "numeric_values",
]

CHUNK_ROWS = 65536  # rows per chunk (one session.run, one request batch, one write)
CSV_BLOCK_BYTES = 4 << 20  # pyarrow's streaming CSV block: ~4 MiB of text at a time
TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
ARRAY_SUFFIXES = (".npz", ".npy")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
INPUT_SUFFIXES = (*TEXT_SUFFIXES, *PARQUET_SUFFIXES, *ARRAY_SUFFIXES)
DELIMITERS = (",", "\t", ";", "|")  # tried in this order; a .tsv tries tab first
SNIFF_BYTES = 1 << 16
SNIFF_LINES = 50

# A missing cell: pandas' and pyarrow's default NA spellings, and lower-case "na".
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
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "na",
        "nan",
        "null",
    }
)
_TRUE, _FALSE = ("true", "True", "TRUE"), ("false", "False", "FALSE")


class TableError(ValueError):
    """The table cannot be read as asked; the message names the file, column, row and line."""


# --------------------------------------------------------------------------------------------
# Formats and CSV layout


@dataclass(frozen=True)
class FileFormat:
    kind: str  # "csv", "parquet", "npz" or "npy"
    compression: str | None = None  # "gzip", "zstd", "bz2" (CSV-like text only)
    suffix: str = ".csv"  # the suffix that named the kind (.tsv decides the first delimiter)


def file_format(path: str | os.PathLike[str], role: str = "input") -> FileFormat:
    """The format a file's suffixes name: data.csv, data.tsv.gz, data.parquet, rows.npy ..."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    inner = (suffixes[-2] if len(suffixes) > 1 else "") if compression else path.suffix.lower()
    if inner in TEXT_SUFFIXES:
        return FileFormat("csv", compression, inner)
    if compression is None and inner in PARQUET_SUFFIXES:
        return FileFormat("parquet", None, inner)
    if compression is None and inner in ARRAY_SUFFIXES:
        return FileFormat(inner[1:], None, inner)
    shown = "".join(path.suffixes[-2:]) if compression else path.suffix
    raise TableError(
        f"{role} {path}: unknown format {shown!r}; expected .csv, .tsv or .txt (optionally "
        ".gz or .zst compressed), .parquet, .npz or .npy"
    )


@dataclass(frozen=True)
class CsvLayout:
    delimiter: str
    header: tuple[str, ...] | None  # None: the first row is data (all numbers or missing)
    width: int  # cells in the first row
    first_row: tuple[str, ...] = ()  # its cells, trimmed (names, or the first data row)

    def named(self) -> CsvLayout:
        """The layout with the first row taken as the header (a header of numbers)."""
        return CsvLayout(self.delimiter, self.first_row, self.width, self.first_row)

    @property
    def first_line(self) -> int:
        """The file line of data row 1."""
        return 2 if self.header is not None else 1


def _open(path: Path, fmt: FileFormat) -> Any:
    import pyarrow as pa

    return pa.input_stream(str(path), compression=fmt.compression)


def csv_layout(
    path: str | os.PathLike[str], fmt: FileFormat | None = None, role: str = "input"
) -> CsvLayout:
    """Delimiter and header of a CSV-like file, from its first lines.

    The delimiter is the candidate that splits the first lines into the same number (> 1) of
    cells, the most cells winning; a file of one column reads as one. A first row that is
    all numbers or missing values is data, not a header."""
    path = Path(path)
    fmt = fmt or file_format(path, role)
    try:
        with _open(path, fmt) as stream:
            head = stream.read(SNIFF_BYTES)
    except OSError as exc:  # a corrupt archive, an unreadable file
        raise TableError(f"{role} {path} cannot be read: {exc}") from None
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = text.splitlines()
    if len(head) == SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut short
    lines = [line for line in lines[:SNIFF_LINES] if line.strip()]
    if not lines:
        raise TableError(f"{role} {path} is empty (no header row)")
    order = DELIMITERS if fmt.suffix != ".tsv" else ("\t", *DELIMITERS[:1], *DELIMITERS[2:])
    best, best_width = order[0], 1
    for delimiter in order:
        widths = {len(row) for row in csv.reader(lines, delimiter=delimiter)}
        if len(widths) == 1 and (width := widths.pop()) > best_width:
            best, best_width = delimiter, width
    first = next(csv.reader(lines[:1], delimiter=best))
    is_data = all(is_missing(c) or _is_number(c) for c in first)
    cells = tuple(c.strip() for c in first)
    return CsvLayout(best, None if is_data else cells, len(first), cells)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_missing(text: str) -> bool:
    """A cell's text that means a missing value (after trimming)."""
    return text.strip() in MISSING_TOKENS


# --------------------------------------------------------------------------------------------
# Cell rules (Arrow columns -> numpy)


def _missing_set() -> Any:
    import pyarrow as pa

    return pa.array(sorted(MISSING_TOKENS), type=pa.string())


def _clean_text(array: Any) -> Any:
    """Trimmed text, null where the cell is a missing token (a string Arrow array)."""
    import pyarrow.compute as pc

    trimmed = pc.utf8_trim_whitespace(array)
    return pc.if_else(pc.is_in(trimmed, value_set=_missing_set()), None, trimmed)


def numeric_values(
    column: Any,
    name: str,
    where: str,
    first_row: int = 0,
    *,
    allow_missing: bool,
    line0: int | None = None,
) -> np.ndarray:
    """A column as (n,) float32 by the cell rules: NaN for a missing cell where allowed, else
    an error; text that is no number and infinities are errors. ``where`` names the source,
    ``first_row`` the column's first row (0-based), ``line0`` the file line of row 0."""
    import pyarrow as pa

    column = _decoded(column)
    text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
    if text:
        column = _clean_text(column)
    try:
        values = column.cast(pa.float32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if not text:
            raise TableError(f"{where}: column {name!r} holds {column.type}, not numbers") from None
        row = next(
            i for i, v in enumerate(column.to_pylist()) if v is not None and not _is_number(v)
        )
        raise TableError(
            f"{where}: column {name!r}, {_row(first_row + row, line0)}: "
            f"{column[row].as_py()[:32]!r} is not a number"
        ) from None
    out = values.to_numpy(zero_copy_only=False)  # nulls become NaN, as typed NaN cells are
    _check_cells(out, name, where, first_row, line0, allow_missing, "a finite number")
    return out.astype(np.float32, copy=False)


def category_text(column: Any) -> np.ndarray:
    """A categorical column as (n,) object text by the cell rules ("" for missing).

    Text of a dictionary column (how CSVs are read) is built once per distinct value; a typed
    column (bool, integer) goes through Arrow's cast to string."""
    import pyarrow as pa

    if not isinstance(column, (pa.Array, pa.ChunkedArray)):
        column = pa.array(np.asarray(column, dtype=object), from_pandas=True)
    if isinstance(column, pa.ChunkedArray):
        parts = [category_text(chunk) for chunk in column.chunks]
        return np.concatenate(parts) if parts else np.empty(0, dtype=object)
    if pa.types.is_dictionary(column.type):
        text = np.append(category_text(column.dictionary), "")
        return text[column.indices.fill_null(len(text) - 1).to_numpy(zero_copy_only=False)]
    if pa.types.is_boolean(column.type):
        words = np.array(["False", "True", ""], dtype=object)
        codes = column.cast(pa.int8()).fill_null(2).to_numpy(zero_copy_only=False)
        return words[codes]
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    text = np.asarray(_clean_text(column).fill_null("").to_numpy(zero_copy_only=False), object)
    if len(text):  # bool spellings, as a typed bool column casts
        text[np.isin(text, _TRUE)] = "True"
        text[np.isin(text, _FALSE)] = "False"
    return text


# A cell of a date column that is a number holds seconds since 1970 already; a time followed by
# Z or an offset is converted to UTC (pyarrow parses the two kinds by different casts).
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_ZONED = r"\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d(:?\d\d)?)$"
DATE_FORMS = (
    "ISO 8601 (2024-01-31, 2024-01-31 08:15:00, optionally with Z or an offset such as "
    "+02:00) or seconds since 1970-01-01 UTC"
)


def date_seconds(
    column: Any,
    name: str,
    where: str,
    first_row: int = 0,
    *,
    allow_missing: bool,
    line0: int | None = None,
) -> np.ndarray:
    """A date column as (n,) float64 seconds since 1970-01-01 UTC by the cell rules: NaN for a
    missing cell where allowed; a cell that is no date is an error naming its row."""
    import pyarrow as pa

    column = _decoded(column)
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = _clean_text(column).cast(pa.string())
        seconds = _text_seconds(text, name, where, first_row, line0)
    elif pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        tz = getattr(kind, "tz", None)  # an aware timestamp's integers are UTC already
        micros = column.cast(pa.timestamp("us", tz=tz), safe=False).cast(pa.int64())
        seconds = _as_float(micros) / 1e6
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        seconds = _as_float(column)
    else:
        raise TableError(f"{where}: column {name!r} holds {kind}, not dates ({DATE_FORMS})")
    _check_cells(
        seconds, name, where, first_row, line0, allow_missing, "a finite number of seconds"
    )
    return seconds


def _decoded(column: Any) -> Any:
    """One Arrow array of plain values: chunks combined, a dictionary column decoded."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column


def _check_cells(
    values: np.ndarray,
    name: str,
    where: str,
    first_row: int,
    line0: int | None,
    allow_missing: bool,
    finite: str,
) -> None:
    """The first infinite cell is an error (``finite``: what it should have been), and so is
    the first NaN one for a model that does not impute."""
    missing = np.isnan(values)
    if not allow_missing and missing.any():
        raise TableError(
            f"{where}: column {name!r}, {_row(first_row + int(np.argmax(missing)), line0)}: "
            "value is missing (the model was trained without missing values, so it does not "
            "impute)"
        )
    bad = np.isinf(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise TableError(
            f"{where}: column {name!r}, {_row(first_row + row, line0)}: {values[row]} is not "
            f"{finite}"
        )


def _as_float(array: Any) -> np.ndarray:
    import pyarrow as pa

    # Unsafe: microseconds before 1685 or after 2255 exceed 2**53 and round (to under 1 us).
    values = array.cast(pa.float64(), safe=False)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def _text_seconds(text: Any, name: str, where: str, first_row: int, line0: int | None) -> Any:
    """Trimmed text (null = missing) of a date column -> float64 seconds."""
    import pyarrow as pa

    try:
        return _parse_dates(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        row, cell = _first_bad_date(text)
        raise TableError(
            f"{where}: column {name!r}, {_row(first_row + row, line0)}: {cell[:40]!r} is not a "
            f"date; write {DATE_FORMS} (a blank cell means missing)"
        ) from None


def _parse_dates(text: Any) -> np.ndarray:
    """Text -> float64 seconds; raises pyarrow's ArrowInvalid at a cell that is no date."""
    import pyarrow as pa
    import pyarrow.compute as pc

    number = pc.fill_null(pc.match_substring_regex(text, _NUMBER), False)
    zoned = pc.fill_null(pc.match_substring_regex(text, _ZONED), False)
    none = pa.scalar(None, pa.string())
    numbers = _as_float(pc.if_else(number, text, none))
    local = _timestamps(pc.if_else(pc.or_(number, zoned), none, text), None)
    utc = _timestamps(pc.if_else(zoned, text, none), "UTC")
    seconds = np.fmax(local, utc) / 1e6  # each cell is in one of the two, or neither (NaN)
    return np.where(np.isnan(numbers), seconds, numbers)


def _timestamps(text: Any, tz: str | None) -> np.ndarray:
    """Microseconds as float64 (NaN for null). Digits past the microsecond are cut first: the
    microsecond cast refuses them, and a nanosecond one would refuse years outside 1677-2262."""
    import pyarrow as pa
    import pyarrow.compute as pc

    micro = pc.replace_substring_regex(text, r"(\.\d{6})\d+", r"\1")
    return _as_float(micro.cast(pa.timestamp("us", tz=tz)).cast(pa.int64()))


def _first_bad_date(text: Any) -> tuple[int, str]:
    """(row, text) of the first cell no date cast takes (the error path only)."""
    import pyarrow as pa

    for row, cell in enumerate(text.to_pylist()):
        if cell is None:
            continue
        try:
            _parse_dates(pa.array([cell], pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return row, cell
    return 0, str(text[0])


def label_text(value: Any) -> str:
    """A target cell as a class label, the same in training and evaluation: 3, 3.0 and "3"
    are "3"; True is "True"; text is trimmed; None (missing) is ""."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and np.isnan(value):
        return ""
    text = str(value).strip()
    if text in _TRUE or text in _FALSE:
        return "True" if text in _TRUE else "False"
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _row(row: int, line0: int | None) -> str:
    """Rows count data rows from 1; a CSV also gives the line (the header is line 1)."""
    return f"row {row + 1}" if line0 is None else f"row {row + 1} (line {row + line0})"


# --------------------------------------------------------------------------------------------
# Chunks


@dataclass
class Chunk:
    """Consecutive rows: ``features`` (n, F) float32 (NaN = missing), ``categories`` (n, C)
    object text or None, ``targets`` raw target cells (n,) or (n, T) or None, ``dates`` (n, D)
    float64 seconds since 1970 or None."""

    features: np.ndarray
    categories: np.ndarray | None = None
    targets: np.ndarray | None = None
    first_row: int = 0
    dates: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def inputs(self, contract: ModelContract) -> dict[str, np.ndarray]:
        """The model's input tensors: "features" [n, F] float32 (left out when F is 0), one
        [n, 1] object array per categorical column and one [n, 1] float64 array of seconds per
        date column, each named after its column."""
        feed: dict[str, np.ndarray] = {}
        if contract.feature_names:
            feed["features"] = self.features
        for i, name in enumerate(contract.categorical_columns):
            feed[name] = self.categories[:, i : i + 1]  # type: ignore[index]
        for i, name in enumerate(contract.date_columns):
            feed[name] = self.dates[:, i : i + 1]  # type: ignore[index]
        return feed


Source = Any  # a path, a pandas DataFrame, a pyarrow Table / RecordBatch, a numpy array


def iter_chunks(
    source: Source,
    numeric: Sequence[str],
    categorical: Sequence[str] = (),
    target: str | None = None,
    *,
    chunk_rows: int = CHUNK_ROWS,
    allow_missing: bool = False,
    role: str = "input",
    dates: Sequence[str] = (),
) -> Iterator[Chunk]:
    """Chunks of ``chunk_rows`` rows (the last may be shorter) of the ``numeric``,
    ``categorical`` and ``dates`` columns (picked by name; other columns are ignored) and, with
    ``target`` ("a" or "a,b"), the raw target cells. ``role`` starts every message."""
    columns = _Columns(list(numeric), list(categorical), list(dates))
    targets = [] if not target else [t.strip() for t in target.split(",")]
    if isinstance(source, np.ndarray):
        blocks = _ndarray_blocks(source, columns, chunk_rows, allow_missing, role)
    elif isinstance(source, (str, os.PathLike)):
        blocks = _file_blocks(Path(source), columns, targets, allow_missing, role, chunk_rows)
    else:
        blocks = _memory_blocks(source, columns, targets, allow_missing, role, chunk_rows)
    yield from _rechunk(blocks, chunk_rows)


@dataclass(frozen=True)
class _Columns:
    """The columns a reader picks, by kind."""

    numeric: list[str]
    categorical: list[str]
    dates: list[str]

    @property
    def named(self) -> list[str]:
        """Columns that must be named by a header: a headerless file holds numbers only."""
        return [*self.categorical, *self.dates]

    def all(self, targets: Sequence[str] = ()) -> list[str]:
        return [*self.numeric, *self.categorical, *self.dates, *targets]


def _rechunk(blocks: Iterator[Chunk], chunk_rows: int) -> Iterator[Chunk]:
    """Blocks of any size -> chunks of exactly chunk_rows rows (the last may be shorter)."""
    pending: list[Chunk] = []
    count, first = 0, 0
    for block in blocks:
        if len(block) == 0:
            continue
        pending.append(block)
        count += len(block)
        while count >= chunk_rows:
            joined = _join(pending, first)
            yield _take(joined, 0, chunk_rows)
            first += chunk_rows
            pending = [_take(joined, chunk_rows, None)]
            count -= chunk_rows
    if count:
        yield _join(pending, first)


def _join(chunks: list[Chunk], first: int) -> Chunk:
    if len(chunks) == 1:
        one = chunks[0]
        return Chunk(one.features, one.categories, one.targets, first, one.dates)

    def cat(parts: list[np.ndarray | None]) -> np.ndarray | None:
        return None if parts[0] is None else np.concatenate(parts)

    return Chunk(
        np.concatenate([c.features for c in chunks]),
        cat([c.categories for c in chunks]),
        cat([c.targets for c in chunks]),
        first,
        cat([c.dates for c in chunks]),
    )


def _take(chunk: Chunk, lo: int, hi: int | None) -> Chunk:
    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[lo:hi]

    return Chunk(
        chunk.features[lo:hi],
        cut(chunk.categories),
        cut(chunk.targets),
        chunk.first_row + lo,
        cut(chunk.dates),
    )


def _check_columns(where: str, header: Sequence[str], names: Sequence[str]) -> None:
    missing = [n for n in names if n not in header]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise TableError(
            f"{where}: column(s) {missing[:5]}{more} missing; needed: "
            f"{list(names)[:8]}{' ...' if len(names) > 8 else ''}"
        )


def _batch_block(
    batch: Any,
    columns: _Columns,
    targets: list[str],
    where: str,
    first_row: int,
    allow_missing: bool,
    line0: int | None,
) -> Chunk:
    """A record batch (any column types) as a Chunk, by the cell rules."""
    n = batch.num_rows
    cells = {"allow_missing": allow_missing, "line0": line0}
    numbers = [
        numeric_values(batch.column(c), c, where, first_row, **cells) for c in columns.numeric
    ]
    x = np.column_stack(numbers) if numbers else np.empty((n, 0), np.float32)
    cats = (
        np.stack([category_text(batch.column(c)) for c in columns.categorical], axis=1)
        if columns.categorical
        else None
    )
    dates = (
        np.stack(
            [date_seconds(batch.column(c), c, where, first_row, **cells) for c in columns.dates],
            axis=1,
        )
        if columns.dates
        else None
    )
    y = None
    if targets:  # (n,) for one target, (n, T) for several; text trimmed, None for missing
        cols = [_target_cells(batch.column(t)) for t in targets]
        y = cols[0] if len(cols) == 1 else np.stack(cols, axis=1)
    return Chunk(x, cats, y, first_row, dates)


def _target_cells(column: Any) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        column = _clean_text(column)
    return np.asarray(column.to_pylist(), dtype=object)


def _file_blocks(
    path: Path,
    columns: _Columns,
    targets: list[str],
    allow_missing: bool,
    role: str,
    chunk_rows: int,
) -> Iterator[Chunk]:
    where = f"{role} {path}"
    if not path.is_file():
        raise TableError(f"{where} does not exist")
    fmt = file_format(path, role)
    if fmt.kind in ("npz", "npy"):
        _numbers_only(where, columns, "a CSV or Parquet file with a header naming the columns")
        yield from _array_blocks(path, columns.numeric, chunk_rows, targets, allow_missing, where)
        return
    if fmt.kind == "parquet":
        yield from _parquet_blocks(path, columns, targets, allow_missing, where, chunk_rows)
        return
    yield from _csv_blocks(path, fmt, columns, targets, allow_missing, where, role)


def _numbers_only(where: str, columns: _Columns, instead: str) -> None:
    """An array source holds numbers only: a model with text or date columns needs names."""
    for kind, names in (("categorical", columns.categorical), ("date", columns.dates)):
        if names:
            raise TableError(f"{where}: the model has {kind} columns {names[:5]}; give {instead}")


def _csv_reader(
    path: Path,
    fmt: FileFormat,
    layout: CsvLayout,
    columns: list[str],
    text: list[str],
    names: list[str],
    numbers: Sequence[str] = (),
) -> Any:
    """pyarrow's streaming reader over ``columns`` of a CSV whose columns are ``names``, every
    cell as text (the cell rules apply after trimming); ``text`` columns dictionary-encoded
    (few distinct values); ``numbers`` parsed as float32 by pyarrow, MISSING_TOKENS null (the
    fast path: pyarrow trims numbers itself, but not a padded token, which then fails)."""
    import pyarrow as pa
    from pyarrow import csv as pa_csv

    types = {c: pa.string() for c in columns}
    types.update({c: pa.dictionary(pa.int32(), pa.string()) for c in text})
    types.update({c: pa.float32() for c in numbers})
    read = pa_csv.ReadOptions(
        block_size=CSV_BLOCK_BYTES, column_names=names, skip_rows=0 if layout.header is None else 1
    )
    convert = pa_csv.ConvertOptions(
        column_types=types,
        include_columns=columns,
        null_values=sorted(MISSING_TOKENS),  # for ``numbers``: text is never null
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    parse = pa_csv.ParseOptions(delimiter=layout.delimiter)
    return pa_csv.open_csv(
        _open(path, fmt), read_options=read, parse_options=parse, convert_options=convert
    )


def _csv_blocks(
    path: Path,
    fmt: FileFormat,
    columns: _Columns,
    targets: list[str],
    allow_missing: bool,
    where: str,
    role: str,
) -> Iterator[Chunk]:
    import pyarrow as pa

    layout = csv_layout(path, fmt, role)
    numeric, categorical = columns.numeric, columns.categorical
    wanted = columns.all(targets)
    if layout.header is None and wanted and set(wanted) <= set(layout.first_row):
        layout = layout.named()  # a header of numbers ("2019,2020") that names the columns
    if layout.header is None:
        # Headerless rows: the model's numeric columns, in order, and nothing else.
        if columns.named or targets or layout.width != len(numeric):
            expected = f" ({', '.join(numeric[:8])}{', ...' if len(numeric) > 8 else ''})"
            if columns.named or targets:
                raise TableError(
                    f"{where}: the first row is no header naming the columns "
                    f"({', '.join(wanted[:8])}{', ...' if len(wanted) > 8 else ''}); add one"
                )
            raise TableError(
                f"{where}: {layout.width} columns, the model expects {len(numeric)}{expected}"
            )
        names = list(numeric)
    else:
        names = list(layout.header)
        if wanted and not set(wanted) & set(names):  # data in the first row, not names
            raise TableError(
                f"{where}: the first row is no header naming the columns "
                f"({', '.join(wanted[:8])}{', ...' if len(wanted) > 8 else ''}); add one"
            )
        _check_columns(where, layout.header, wanted)
    line0 = layout.first_line
    done = 0  # rows yielded
    # Numbers parsed by pyarrow first (fast); at a cell it cannot parse (a word, a padded
    # missing token), the rest is read again as text, where the cell rules decide.
    for numbers in (numeric, []):
        try:
            reader = _csv_reader(path, fmt, layout, wanted, categorical, names, numbers)
            seen = 0
            for batch in reader:
                if seen + batch.num_rows <= done:  # yielded by the fast path already
                    seen += batch.num_rows
                    continue
                batch = batch.slice(done - seen) if seen < done else batch
                yield _batch_block(batch, columns, targets, where, done, allow_missing, line0)
                done = seen = max(seen, done) + batch.num_rows
            return
        except pa.ArrowInvalid as exc:  # a short or long row, a bad quote; a cell (fast path)
            if numbers:
                continue
            message = _locate_bad_row(path, fmt, layout, where) or f"{where}: {exc}"
            raise TableError(message) from None
        except OSError as exc:  # a corrupt archive
            raise TableError(f"{where} cannot be read: {exc}") from None


def _locate_bad_row(path: Path, fmt: FileFormat, layout: CsvLayout, where: str) -> str | None:
    """The first row whose cell count differs from the header's (the error path only)."""
    with _open(path, fmt) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")
        reader = csv.reader(text, delimiter=layout.delimiter)
        if layout.header is not None:
            next(reader, None)
        for row, cells in enumerate(reader):
            if cells and len(cells) != layout.width:
                return (
                    f"{where}: {_row(row, layout.first_line)} has {len(cells)} cells, the "
                    f"header {layout.width}"
                )
    return None


def _parquet_blocks(
    path: Path,
    columns: _Columns,
    targets: list[str],
    allow_missing: bool,
    where: str,
    chunk_rows: int,
) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    try:
        # Categorical columns as dictionaries where the file stores them so: their text is
        # then built per distinct value, not per row.
        file = pq.ParquetFile(path, read_dictionary=columns.categorical)
    except Exception as exc:  # pyarrow raises ArrowInvalid or OSError for a bad file
        raise TableError(f"{where} is not a readable Parquet file: {exc}") from None
    names = columns.all(targets)
    _check_columns(where, file.schema_arrow.names, names)
    row = 0
    for batch in file.iter_batches(batch_size=chunk_rows, columns=names):
        yield _batch_block(batch, columns, targets, where, row, allow_missing, None)
        row += batch.num_rows


def _memory_blocks(
    source: Any,
    columns: _Columns,
    targets: list[str],
    allow_missing: bool,
    role: str,
    chunk_rows: int,
) -> Iterator[Chunk]:
    """A pandas DataFrame or a pyarrow Table / RecordBatch, by the same cell rules."""
    table, kind = _arrow_table(source, role)
    where = f"{role} {kind}"
    names = columns.all(targets)
    _check_columns(where, table.column_names, names)
    row = 0
    for batch in table.select(names).to_batches(max_chunksize=chunk_rows):
        yield _batch_block(batch, columns, targets, where, row, allow_missing, None)
        row += batch.num_rows


def _arrow_table(source: Any, role: str) -> tuple[Any, str]:
    import pyarrow as pa

    if isinstance(source, pa.Table):
        return source, "table"
    if isinstance(source, pa.RecordBatch):
        return pa.Table.from_batches([source]), "table"
    module = type(source).__module__.split(".")[0]
    if module == "pandas" and hasattr(source, "columns"):
        columns = {str(name): _arrow_column(source[name]) for name in source.columns}
        return pa.table(columns), "DataFrame"
    raise TableError(
        f"{role}: cannot read a {type(source).__name__}; give a file path, a pandas DataFrame, "
        "a pyarrow Table or a numpy array"
    )


def _arrow_column(series: Any) -> Any:
    """A pandas column as Arrow; a column of mixed Python objects (text and bools) as text."""
    import pyarrow as pa

    try:
        return pa.array(series, from_pandas=True)
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        cells = series.astype(object).where(series.notna(), None)
        return pa.array([None if v is None else str(v) for v in cells], type=pa.string())


def _ndarray_blocks(
    array: np.ndarray, columns: _Columns, chunk_rows: int, allow_missing: bool, role: str
) -> Iterator[Chunk]:
    where = f"{role} array"
    _numbers_only(where, columns, "a DataFrame, a pyarrow Table or a file with named columns")
    width = len(columns.numeric)
    yield from _slices(np.atleast_2d(array), width, chunk_rows, None, allow_missing, where)


def _array_blocks(
    path: Path,
    numeric: list[str],
    chunk_rows: int,
    targets: list[str],
    allow_missing: bool,
    where: str,
) -> Iterator[Chunk]:
    """NPY (memory-mapped) or NPZ (X or features, and the target array) in slices."""
    y = None
    try:
        if path.suffix.lower() == ".npy":
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as archive:
                key = next((k for k in ("X", "features") if k in archive.files), None)
                if key is None:
                    raise TableError(f"{where}: no array 'X' or 'features'; found {archive.files}")
                x = archive[key]
                if targets:
                    y_key = targets[0] if targets[0] in archive.files else "y"
                    if y_key not in archive.files:
                        raise TableError(f"{where}: no target array {targets[0]!r} or 'y'")
                    y = archive[y_key]
    except (ValueError, OSError) as exc:
        raise TableError(f"{where} is not a readable numpy file: {exc}") from None
    yield from _slices(x, len(numeric), chunk_rows, y, allow_missing, where)


def _slices(
    x: np.ndarray,
    width: int,
    chunk_rows: int,
    y: np.ndarray | None,
    allow_missing: bool,
    where: str,
) -> Iterator[Chunk]:
    x = np.atleast_2d(x) if x.ndim == 1 else x
    if x.ndim != 2 or x.shape[1] != width:
        raise TableError(f"{where}: array is {x.shape}, the model needs (N, {width})")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise TableError(f"{where}: array has dtype {x.dtype}, expected numbers")
    for lo in range(0, len(x), chunk_rows):
        block = np.asarray(x[lo : lo + chunk_rows], dtype=np.float32)
        bad = np.isinf(block) if allow_missing else ~np.isfinite(block)
        if bad.any():
            r, c = (int(i) for i in np.argwhere(bad)[0])
            raise TableError(f"{where}: column {c}, row {lo + r + 1}: not a finite number")
        yield Chunk(block, None, None if y is None else y[lo : lo + chunk_rows], lo)


# --------------------------------------------------------------------------------------------
# Whole tables (training)


@dataclass
class LoadedTable:
    """A whole table for training. ``text``: every column of a CSV as trimmed text with null
    for a missing cell (a Parquet file's or in-memory table's own types); ``source`` names it."""

    text: Any  # pyarrow.Table
    source: str
    is_text: bool  # a CSV: columns are text, types are inferred by ``typed``
    line0: int | None = None  # the file line of data row 1 (CSV), None elsewhere

    @property
    def column_names(self) -> list[str]:
        return [str(c) for c in self.text.column_names]

    @property
    def num_rows(self) -> int:
        return int(self.text.num_rows)

    def typed(self) -> Any:
        """The table with each text column as int64, float64, bool or string: the first that
        every filled cell parses as (a Parquet or in-memory table keeps its own types)."""
        import pyarrow as pa

        if not self.is_text:
            return self.text
        return pa.table({name: _infer(self.text.column(name)) for name in self.column_names})

    def to_pandas(self) -> Any:
        return self.typed().to_pandas()

    def category_text(self, name: str) -> np.ndarray:
        """(N,) categorical text of a column by the cell rules (a CSV cell as written, so
        "007" stays "007" even where the column reads as numbers)."""
        return category_text(self.text.column(name))

    def date_seconds(self, name: str) -> np.ndarray:
        """(N,) float64 seconds since 1970 of a date column by the cell rules (NaN: missing)."""
        where = f"data file {self.source}"
        column = self.text.column(name)
        return date_seconds(column, name, where, allow_missing=True, line0=self.line0)

    def row(self, row: int) -> str:
        return _row(row, self.line0)


def _infer(column: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if column.null_count == len(column):
        return pa.nulls(len(column), pa.float64())
    for kind in (pa.int64(), pa.float64()):
        try:
            return column.cast(kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    truth = pc.is_in(column, value_set=pa.array(_TRUE))
    if pc.all(pc.or_(truth, pc.is_in(column, value_set=pa.array(_FALSE)))).as_py():
        return pc.if_else(pc.is_null(column), None, truth)
    return column


def load_table(source: Source, role: str = "data file") -> LoadedTable:
    """A whole table (training): a CSV-like file read as text by the cell rules, a Parquet
    file, a pandas DataFrame or a pyarrow Table."""
    if not isinstance(source, (str, os.PathLike)):
        table, kind = _arrow_table(source, role)
        return LoadedTable(table, f"<{kind}>", False)
    path = Path(source)
    where = f"{role} {path}"
    fmt = file_format(path, role)
    if fmt.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return LoadedTable(pq.read_table(path), str(path), False)
        except Exception as exc:  # ArrowInvalid, OSError
            raise TableError(f"{where} cannot be parsed: {exc}") from None
    if fmt.kind != "csv":
        raise TableError(f"{where}: a table must be CSV-like text or Parquet, not {fmt.kind}")
    import pyarrow as pa

    layout = csv_layout(path, fmt, role).named()  # a training table always has a header
    try:
        names = list(layout.header)
        reader = _csv_reader(path, fmt, layout, names, [], names)
        table = reader.read_all()
    except pa.ArrowInvalid as exc:
        raise TableError(
            _locate_bad_row(path, fmt, layout, where) or f"{where} cannot be parsed: {exc}"
        ) from None
    except OSError as exc:
        raise TableError(f"{where} cannot be read: {exc}") from None
    cleaned = pa.table(
        {n: _clean_text(table.column(n).combine_chunks()) for n in table.column_names}
    )
    return LoadedTable(cleaned, str(path), True, layout.first_line)
