"""Training data: the bundled digits, a synthetic generator, user tables (files or in memory).

Everything here is numpy; torch only sees the arrays once the trainer puts them on its device.
A source is named by one string, so a checkpoint's ``data_spec`` can rebuild the exact split:
``"digits"``, ``"synthetic:ROWS,FEATURES,CLASSES[,SEED]"`` or a file path. Tables (CSV-like
text, compressed or not, Parquet, a pandas DataFrame or a pyarrow Table) are read by
``bnmodel.table``, with the cell rules predict, evaluate and ``bnmodel infer`` apply.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bnmodel import table as tables
from bnmodel.dates import feature_names as date_feature_names

__all__ = [
    "DataError",
    "Dataset",
    "data_spec",
    "dataset_from_frame",
    "load_digits",
    "load_file",
    "load_source",
    "make_synthetic",
    "split",
    "split_three",
    "summarize",
    "validation_split",
]

Task = Literal["classification", "regression"]
TABULAR_SUFFIXES = (*tables.TEXT_SUFFIXES, *tables.PARQUET_SUFFIXES)


class DataError(ValueError):
    """The data cannot be used as given; the message names the file, column and row."""


@dataclass
class Dataset:
    features: np.ndarray  # (N, F) float32
    targets: np.ndarray  # (N,) int64 class indices, or (N, T) float32 for regression
    feature_names: list[str]
    class_labels: list[str] | None
    task: Task
    source: str
    task_reason: str = ""  # why this task: inferred from the target (the rule) or given
    target: str | None = None  # the target column (or NPZ array) the labels came from
    # Raw tables: categorical columns as exact text, "" for a blank cell (N, C) object; the
    # numeric ``features`` then hold NaN for missing cells (bnmodel/encoding.py encodes both).
    categories: np.ndarray | None = None
    categorical_names: list[str] = field(default_factory=list)
    blank_target_rows: int = 0  # rows dropped because their target cell was blank
    warnings: list[str] = field(default_factory=list)  # printed and written to data.json
    # Date columns as seconds since 1970-01-01 UTC, NaN for a missing cell (N, D) float64;
    # the encoder turns them into numeric features (bnmodel/dates.py).
    dates: np.ndarray | None = None
    date_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_outputs(self) -> int:
        """Width of the model's output layer: classes, or regression targets."""
        if self.task == "classification":
            return len(self.class_labels or [])
        return int(self.targets.shape[1])

    @property
    def has_missing(self) -> bool:
        return bool(np.isnan(self.features).any())

    @property
    def needs_encoding(self) -> bool:
        """Categorical or date columns, or missing numerics: the model gets an Encode layer."""
        return bool(self.categorical_names) or bool(self.date_names) or self.has_missing

    def subset(self, index: np.ndarray) -> Dataset:
        categories = None if self.categories is None else self.categories[index]
        dates = None if self.dates is None else self.dates[index]
        return replace(
            self,
            features=self.features[index],
            targets=self.targets[index],
            categories=categories,
            dates=dates,
        )


# --------------------------------------------------------------------------------------------
# Built-in sources


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits: 1797 rows, 64 pixel features (0..16), 10 classes."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return Dataset(
        features=bunch.data.astype(np.float32),
        targets=bunch.target.astype(np.int64),
        feature_names=[str(n) for n in bunch.feature_names],
        class_labels=[str(c) for c in range(10)],
        task="classification",
        source="digits",
    )


def make_synthetic(n_rows: int, n_features: int, n_classes: int, seed: int = 0) -> Dataset:
    """Gaussian features labelled by a random linear teacher plus noise: learnable, any size."""
    if n_rows < 2 or n_features < 1 or n_classes < 2:
        raise DataError(
            f"synthetic data needs rows >= 2, features >= 1 and classes >= 2, got "
            f"{n_rows}, {n_features}, {n_classes}"
        )
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, n_features), dtype=np.float32)
    teacher = rng.standard_normal((n_features, n_classes), dtype=np.float32) / np.sqrt(n_features)
    noise = 0.5 * rng.standard_normal((n_rows, n_classes), dtype=np.float32)
    y = np.argmax(x @ teacher + noise, axis=1).astype(np.int64)
    return Dataset(
        features=x,
        targets=y,
        feature_names=[f"x{i}" for i in range(n_features)],
        class_labels=[str(c) for c in range(n_classes)],
        task="classification",
        source=f"synthetic:{n_rows},{n_features},{n_classes},{seed}",
    )


def _parse_synthetic(source: str) -> Dataset:
    parts = source.split(":", 1)[1].split(",")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (3, 4):
        raise DataError(
            f"data source {source!r}: expected 'synthetic:ROWS,FEATURES,CLASSES[,SEED]', "
            "for example 'synthetic:100000,784,10'"
        )
    return make_synthetic(*numbers)


def load_source(
    source: Any,
    target: str | None = None,
    task: str | None = None,
    categorical: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
) -> Dataset:
    """The dataset a source names: "digits", "synthetic:...", a file path, a table in
    memory (a pandas DataFrame or a pyarrow Table; ``target`` names its target column), or a
    Dataset already read (the scikit-learn estimators build one)."""
    if isinstance(source, Dataset):
        return source
    if not isinstance(source, (str, os.PathLike)):
        return load_file(source, target, task, categorical=categorical, drop=drop)
    source = str(source)
    if source == "digits":
        return load_digits()
    if isinstance(source, str) and source.startswith("synthetic:"):
        return _parse_synthetic(source)
    return load_file(source, target, task, categorical=categorical, drop=drop)


# --------------------------------------------------------------------------------------------
# Files


def load_file(
    path: Any,
    target: str | None = None,
    task: str | None = None,
    classes: list[str] | None = None,
    *,
    categorical: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
) -> Dataset:
    """Load CSV/Parquet (one named target column, all others features) or NPZ.

    Table features: string, bool and pandas-category columns (and the integer columns named in
    ``categorical``) are categorical, kept as exact text; the others numeric, where a blank,
    "NA" or NaN cell is missing (NaN). A column of numbers holding a stray word is an error
    naming the cell.

    NPZ holds arrays ``X`` (or ``features``) [N, F] and ``y`` (or ``targets``) [N] or [N, T], and
    optionally ``feature_names`` and ``class_labels`` (string arrays). ``task`` is inferred when
    None (see ``infer_task``). ``classes``: encode labels with a trained model's classes (test
    rows), where a label never seen in training is an error.
    """
    if task not in (None, "classification", "regression"):
        raise DataError(f"--task must be 'classification' or 'regression', got {task!r}")
    if not isinstance(path, (str, os.PathLike)):  # a DataFrame or a pyarrow Table
        return _load_table(path, target, task, classes, tuple(categorical), tuple(drop))
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"data file {path} is empty")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path, target, task, classes)
    kind = _format(path)
    if kind in ("csv", "parquet"):
        return _load_table(path, target, task, classes, tuple(categorical), tuple(drop))
    if categorical or drop:
        raise DataError(f"data file {path}: --categorical and --drop need a CSV or Parquet file")
    raise DataError(
        f"data file {path}: unknown format {suffix!r}; expected .csv, .tsv or .txt (optionally "
        ".gz or .zst compressed), .parquet or .npz"
    )


def _format(path: Path) -> str | None:
    """The table reader's name for a file's format ("csv", "parquet", ...), None if unknown."""
    try:
        return tables.file_format(path).kind
    except tables.TableError:
        return None


def _read_frame(source: Any) -> tuple[Any, tables.LoadedTable]:
    """(pandas frame with inferred column types, the table as read: categorical text comes
    from it, so a CSV's "007" stays "007")."""
    try:
        loaded = tables.load_table(source)
    except tables.TableError as exc:
        raise DataError(str(exc)) from None
    if type(source).__module__.split(".")[0] == "pandas":
        frame = source.copy(deep=False)  # its own dtypes, as the user built them
    else:
        frame = loaded.to_pandas()
    frame.columns = [str(c) for c in frame.columns]
    return frame, loaded


def _load_table(
    source: Any,
    target: str | None,
    task: str | None,
    classes: list[str] | None,
    categorical: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
) -> Dataset:
    frame, loaded = _read_frame(source)
    path = Path(loaded.source)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if target is None:
        if "target" not in columns:
            raise DataError(
                f"data file {path}: no --target given and no column named 'target'; "
                f"columns are {columns}"
            )
        target = "target"
    names = _target_columns(target, columns, path)
    if len(frame) == 0:
        raise DataError(f"data file {path} has a header but no data rows")
    frame, columns = _drop_columns(frame, columns, drop, names, path)
    keep = blank_target_mask(frame, names)
    frame = frame if keep is None else frame.loc[keep].reset_index(drop=True)
    if not [c for c in columns if c not in names]:
        raise DataError(f"data file {path}: no feature columns besides target {target!r}")
    feature_names, cat_names, date_names = _column_kinds(frame, columns, names, categorical, path)
    numeric = [_numeric_column(frame[c], path, c) for c in feature_names]
    features = np.stack(numeric, axis=1) if numeric else np.empty((len(frame), 0))
    categories = _categorical_text(loaded, cat_names) if cat_names else None
    dates = _date_seconds(loaded, date_names, path) if date_names else None
    if keep is not None:  # the reader's columns hold every row, blank targets too
        categories = None if categories is None else categories[keep]
        dates = None if dates is None else dates[keep]
    warnings = id_like_columns(features, feature_names, categories, cat_names)
    if len(names) > 1:
        targets, labels, task, why = _several_targets(frame, names, path, task, classes)
    else:
        targets, labels, task, why = _encode_targets(
            frame[target].to_numpy(), path, target, task, classes
        )
    return Dataset(
        features.astype(np.float32),
        targets,
        feature_names,
        labels,
        task,
        loaded.source,
        why,
        target,
        categories,
        cat_names,
        0 if keep is None else int((~keep).sum()),
        warnings,
        dates,
        date_names,
    )


# What messages and data_spec call a table given in memory rather than read from a file
# (bnmodel.table names a DataFrame source so).
FRAME_SOURCE = "<DataFrame>"


def dataset_from_frame(
    frame: Any,
    target: str | None = None,
    task: str | None = None,
    classes: list[str] | None = None,
    categorical: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
) -> Dataset:
    """A table in memory (pandas DataFrame or pyarrow Table) -> Dataset, read by the same
    rules and reader as a file (``load_file``)."""
    return _load_table(frame, target, task, classes, tuple(categorical), tuple(drop))


# A column with a distinct value in at least this share of rows identifies rows rather than
# describing them (string ids), as does an integer column counting up by one.
ID_SHARE = 0.9
ID_MIN_ROWS = 20


def id_like_columns(
    numeric: np.ndarray, numeric_names: list[str], text: np.ndarray | None, text_names: list[str]
) -> list[str]:
    """One warning per column that looks like a per-row id, naming it and suggesting --drop."""
    n = len(numeric)
    if n < ID_MIN_ROWS:
        return []
    found = []
    for i, name in enumerate(text_names):
        if len(np.unique(text[:, i])) >= ID_SHARE * n:
            found.append((name, "text unique to (nearly) every row"))
    for j, name in enumerate(numeric_names):
        column = numeric[:, j]
        if np.isnan(column).any() or not np.all(column == np.round(column)):
            continue
        values = np.unique(column)
        span = values[-1] - values[0] + 1  # a run of consecutive integers, a few missing
        if len(values) >= ID_SHARE * n and span * ID_SHARE <= len(values):
            found.append((name, "integers counting up by one, one per row"))
    return [
        f"column {name!r} looks like a row id ({why}): it cannot generalize to new rows; "
        f"pass --drop {name} unless it means something"
        for name, why in found
    ]


def _drop_columns(
    frame: Any, columns: list[str], drop: tuple[str, ...], targets: list[str], path: Path
) -> tuple[Any, list[str]]:
    """The frame without the --drop columns; an unknown name or the target is an error."""
    bad = [c for c in drop if c not in columns or c in targets]
    if bad:
        what = "is the target" if bad[0] in targets else "does not exist"
        raise DataError(f"data file {path}: --drop column {bad[0]!r} {what}; columns are {columns}")
    if not drop:
        return frame, columns
    return frame.drop(columns=list(drop)), [c for c in columns if c not in drop]


def blank_target_mask(frame: Any, targets: list[str]) -> np.ndarray | None:
    """(N,) bool, True for the rows to keep: those whose target cells are all filled; None when
    every row is kept.

    Training and evaluation both drop rows with a blank or missing target (a blank answer is
    neither a label nor a value) and report how many. A target blank in every row is left for
    the caller's error.
    """
    blank = frame[targets].isna().any(axis=1).to_numpy()
    if not blank.any() or blank.all():
        return None
    return ~blank


# A column of text is categorical, unless at least this share of its filled cells are numbers:
# then it is a numeric column with a typo, and the first non-number is reported.
NUMERIC_SHARE = 0.5
TEXT_SAMPLE = 1000
# The exported graph's numeric input and outputs: no categorical input (named as its column)
# may take one of these names.
RESERVED_NAMES = ("features", "logits", "probabilities", "predictions")


def _column_kinds(
    frame: Any, columns: list[str], targets: list[str], categorical: tuple[str, ...], path: Path
) -> tuple[list[str], list[str], list[str]]:
    """(numeric, categorical, date columns), each in file order."""
    import pandas as pd

    unknown = [c for c in categorical if c not in columns or c in targets]
    if unknown:
        what = "is the target" if unknown[0] in targets else "does not exist"
        raise DataError(
            f"data file {path}: --categorical column {unknown[0]!r} {what}; columns are {columns}"
        )
    numeric, cats, dates = [], [], []
    for name in (c for c in columns if c not in targets):
        series = frame[name]
        kind = series.dtype.kind
        if name not in categorical and _is_date(series):
            dates.append(name)
        elif name in categorical or kind == "b" or isinstance(series.dtype, pd.CategoricalDtype):
            cats.append(name)
        elif kind in "OSU" or pd.api.types.is_string_dtype(series.dtype):
            (cats if _is_text(series, path, name) else numeric).append(name)
        else:
            numeric.append(name)
    taken = [c for c in (*cats, *dates) if c in RESERVED_NAMES]
    if taken:
        kind = "categorical" if taken[0] in cats else "date"
        raise DataError(
            f"data file {path}: a {kind} column may not be named {taken[0]!r} (the "
            f"exported model's inputs and outputs include {list(RESERVED_NAMES)}); rename it"
        )
    return numeric, cats, dates


# ISO 8601 dates and datetimes as text: 2024-01-31, 2024-01-31T08:15, 2024-01-31 08:15:00.5+02:00.
ISO_DATE = re.compile(
    r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?"
)


def _is_date(series: Any) -> bool:
    """A date or datetime column: a timestamp or date type, or text whose first TEXT_SAMPLE
    filled cells are all ISO dates. It becomes date features (as categories, every new date
    would be unseen)."""
    kind = series.dtype.kind
    filled = series.dropna().iloc[:TEXT_SAMPLE]
    return kind == "M" or (kind == "O" and len(filled) > 0 and _all_dates(filled))


def _date_seconds(loaded: tables.LoadedTable, names: list[str], path: Path) -> np.ndarray:
    """(N, D) float64 seconds since 1970 of the date columns, by the reader's cell rules."""
    columns = []
    for name in names:
        try:
            columns.append(loaded.date_seconds(name))
        except tables.TableError as exc:  # the message names the file, column, row and cell
            raise DataError(f"{exc}; or pass --categorical {name}") from None
    return np.stack(columns, axis=1)


def _all_dates(filled: Any) -> bool:
    """Typed dates, or text cells more than half of which are ISO dates (the reader takes
    numbers as seconds, and a cell that is neither is an error naming it)."""
    first = filled.iloc[0]
    if isinstance(first, (datetime.date, np.datetime64)):
        return all(isinstance(v, (datetime.date, np.datetime64)) for v in filled)
    if not all(isinstance(v, str) for v in filled):
        return False
    dates = sum(bool(ISO_DATE.fullmatch(v.strip())) for v in filled)
    return dates > len(filled) * NUMERIC_SHARE  # a stray word is then an error naming it


def _is_text(series: Any, path: Path, name: str) -> bool:
    """A text column is categorical; mostly numbers with a stray word is an error naming it.

    The first TEXT_SAMPLE filled cells decide the common case (a text column) without
    parsing every cell as a number."""
    import pandas as pd

    filled = series.dropna()
    if len(filled) == 0:
        return True
    is_bool = series.dtype == object and isinstance(filled.iloc[0], (bool, np.bool_))
    if is_bool and filled.map(lambda v: isinstance(v, (bool, np.bool_))).all():
        return True  # bools with blanks: pandas keeps them as objects
    sample = pd.to_numeric(filled.iloc[:TEXT_SAMPLE], errors="coerce")
    if sample.notna().mean() < NUMERIC_SHARE:
        return True
    parsed = pd.to_numeric(filled, errors="coerce")
    share = float(parsed.notna().mean())
    if share < NUMERIC_SHARE:
        return True
    if share < 1.0:
        row = int(np.flatnonzero(series.notna().to_numpy() & ~_parses(series))[0])
        raise DataError(
            f"data file {path}: column {name!r}, {_row_hint(path, row)}: {series.iloc[row]!r} "
            f"is not a number, but {100 * share:.0f}% of the column's cells are; fix the cell "
            f"(blank means missing), or pass --categorical {name} to treat the column as "
            "categories"
        )
    return False


def _parses(series: Any) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(series, errors="coerce").notna().to_numpy()


def _categorical_text(loaded: tables.LoadedTable, names: list[str]) -> np.ndarray:
    """(N, C) text of categorical columns by the table reader's cell rules, exactly as
    ``bnmodel predict`` and ``bnmodel infer`` read them (a CSV's cells as written, trimmed;
    typed Parquet columns through Arrow's cast). Missing is ""."""
    return np.stack([loaded.category_text(n) for n in names], axis=1)


def _target_columns(target: str, columns: list[str], path: Path) -> list[str]:
    """The target column, or several for regression: "a,b" names columns a and b."""
    if target in columns:
        return [target]
    names = [n.strip() for n in target.split(",")]
    if len(names) > 1 and all(n in columns for n in names):
        return names
    missing = [n for n in names if n not in columns]
    raise DataError(
        f"data file {path}: target column {missing[0] if missing else target!r} does not "
        f"exist; columns are {columns}"
    )


def _several_targets(
    frame: Any, names: list[str], path: Path, task: str | None, classes: list[str] | None
) -> tuple[np.ndarray, None, Task, str]:
    """(N, T) float32 regression targets from T columns; each column checked on its own."""
    if task == "classification" or classes is not None:
        raise DataError(f"data file {path}: several target columns {names} are for regression only")
    columns = [_encode_targets(frame[n].to_numpy(), path, n, "regression")[0] for n in names]
    why = f"{len(names)} target columns: regression"
    return np.concatenate(columns, axis=1), None, "regression", why


def _row_hint(path: Path, row: int) -> str:
    """Row numbers count data rows from 1; a CSV's header is line 1, so data row r is line r + 1."""
    if _format(path) == "csv":
        return f"row {row + 1} (line {row + 2})"
    return f"row {row + 1}"


def _numeric_column(series: Any, path: Path, column: str) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if len(series) and series.isna().all():
        raise DataError(
            f"data file {path}: column {column!r} is entirely missing ({len(series)} empty "
            "values); drop the column"
        )
    # Missing cells (blank, NA, NaN) stay NaN: the model imputes them. Infinities are errors.
    bad = np.isinf(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            f"data file {path}: column {column!r}, {_row_hint(path, row)}: "
            f"{series.iloc[row]!r} is not a finite number; features must be finite numbers "
            "(a blank cell means missing)"
        )
    return values


# Integer targets: classification when the distinct values are few and each is well represented,
# a quantity (regression) when there are many; between the two, the user must say (--task).
MAX_INTEGER_CLASSES = 20
MIN_ROWS_PER_INTEGER_CLASS = 5
INTEGER_TASK_RULE = (
    f"an integer target with 2 distinct values, or 3 to {MAX_INTEGER_CLASSES} each in at least "
    f"{MIN_ROWS_PER_INTEGER_CLASS} rows, is classification; more than {MAX_INTEGER_CLASSES} "
    "distinct values is regression"
)


def infer_task(raw: np.ndarray, where: str) -> tuple[Task, str]:
    """(task, why) for target values ``raw`` (N,); raises DataError when truly ambiguous.

    String or bool targets are classification, float targets regression, integers by
    INTEGER_TASK_RULE. ``where`` names the file and column for messages.
    """
    kind = np.asarray(raw).dtype.kind
    if kind == "b":
        return "classification", "the target is boolean"
    if kind == "f":
        return "regression", "the target holds floating-point numbers" + _float_codes_hint(raw)
    if kind not in "iu":
        return "classification", "the target holds strings"
    values, counts = np.unique(raw, return_counts=True)
    k, rarest = len(values), int(counts.min())
    if k <= 2:
        return "classification", f"the integer target has {k} distinct values"
    if k > MAX_INTEGER_CLASSES:
        return "regression", (
            f"the integer target has {k} distinct values (> {MAX_INTEGER_CLASSES}), read as a "
            "quantity; pass --task classification if they are class codes"
        )
    if rarest >= MIN_ROWS_PER_INTEGER_CLASS:
        return "classification", (
            f"the integer target has {k} distinct values (<= {MAX_INTEGER_CLASSES}), each in "
            f">= {MIN_ROWS_PER_INTEGER_CLASS} rows"
        )
    value = values[int(np.argmin(counts))]
    raise DataError(
        f"{where}: cannot tell whether the integer target is classes or a quantity: "
        f"{k} distinct values, value {value} in only {rarest} row(s); pass --task "
        f"classification or --task regression ({INTEGER_TASK_RULE})"
    )


def _float_codes_hint(raw: np.ndarray) -> str:
    """The integer target's hint for floats that are few whole numbers (0.0 .. 6.0)."""
    values = np.unique(np.asarray(raw, dtype=np.float64))
    if len(values) > MAX_INTEGER_CLASSES or not np.all(values == np.round(values)):
        return ""
    return (
        f", but only {len(values)} distinct whole values ({values[0]:g} .. {values[-1]:g}); "
        "pass --task classification if they are class codes"
    )


def encode_labels(raw: np.ndarray, classes: list[str], where: str) -> np.ndarray:
    """Class indices (N,) int64 of ``raw`` labels under the training ``classes`` (sorted).

    A label that training never saw is an error naming it and how many rows hold it.
    """
    text = np.asarray([_label_text(v) for v in raw], dtype=object)
    lookup = {label: i for i, label in enumerate(classes)}
    unseen = sorted({t for t in text if t not in lookup})
    if unseen:
        counts = {u: int(np.sum(text == u)) for u in unseen}
        listed = ", ".join(f"{u!r} ({n} rows)" for u, n in list(counts.items())[:5])
        raise DataError(
            f"{where}: label(s) never seen in training: {listed}; the model knows "
            f"{classes[:10]}{' ...' if len(classes) > 10 else ''}"
        )
    return np.fromiter((lookup[t] for t in text), dtype=np.int64, count=len(text))


# A label's text: one rule for training and evaluation (3 and 3.0 are "3").
_label_text = tables.label_text


def sorted_labels(raw: np.ndarray) -> list[str]:
    """Distinct labels in sorted order (numeric order for numbers), as text."""
    distinct = np.unique(np.asarray(raw))
    return list(dict.fromkeys(_label_text(v) for v in distinct))


def _check_classes(targets: np.ndarray, labels: list[str], where: str) -> None:
    counts = np.bincount(targets, minlength=len(labels))
    if np.count_nonzero(counts) < 2:
        label = labels[int(np.argmax(counts))]
        raise DataError(
            f"{where}: every row holds the same label {label!r}; classification needs "
            "at least 2 classes"
        )
    if np.any(counts == 1):
        label = labels[int(np.argmax(counts == 1))]
        raise DataError(
            f"{where}: class {label!r} has only 1 row; every class needs at least 2 (one to "
            "train on, one to validate): remove or merge it"
        )


def _encode_targets(
    raw: np.ndarray, path: Path, column: str, task: str | None, classes: list[str] | None = None
) -> tuple[np.ndarray, list[str] | None, Task, str]:
    """Targets as int64 class indices (with their labels) or float32 (N, 1) regression values,
    the task, and why that task (inferred, or given)."""
    import pandas as pd

    where = f"data file {path}: target column {column!r}"
    missing = pd.isna(raw)
    if missing.all():
        raise DataError(f"{where} is entirely missing ({len(raw)} empty values)")
    if missing.any():
        row = int(np.argmax(missing))
        raise DataError(f"{where}, {_row_hint(path, row)}: value is missing")
    raw = _native(raw)
    why = "given by --task"
    if task is None:
        task, why = infer_task(raw, where)
    if task == "regression":
        numeric = pd.to_numeric(pd.Series(raw), errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(numeric).all():
            row = int(np.argmax(~np.isfinite(numeric)))
            raise DataError(
                f"{where}, {_row_hint(path, row)}: {raw[row]!r} is not a finite number "
                "(task is regression)"
            )
        if classes is None and numeric.min() == numeric.max():
            raise DataError(
                f"{where} is constant ({numeric[0]:g} in all {len(numeric)} rows); "
                "there is nothing to regress on"
            )
        return numeric.astype(np.float32)[:, None], None, "regression", why
    if classes is not None:  # rows for a trained model: its classes, no per-class minimum
        return encode_labels(raw, classes, where), list(classes), "classification", why
    labels = sorted_labels(raw)
    targets = encode_labels(raw, labels, where)
    _check_classes(targets, labels, where)
    return targets, labels, "classification", why


def _native(raw: np.ndarray) -> np.ndarray:
    """Object columns of one Python type as that numpy type (pandas gives object for strings)."""
    array = np.asarray(raw)
    if array.dtype != object:
        return array
    if all(isinstance(v, (bool, np.bool_)) for v in array):
        return array.astype(bool)
    return np.asarray([str(v) for v in array], dtype=object)


def _load_npz(
    path: Path, target: str | None, task: str | None, classes: list[str] | None
) -> Dataset:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"data file {path} is not a readable NPZ archive: {exc}") from exc
    with archive:
        arrays = {k: archive[k] for k in archive.files}
    x_key = next((k for k in ("X", "features") if k in arrays), None)
    y_key = target or next((k for k in ("y", "targets") if k in arrays), None)
    if x_key is None or y_key not in arrays:
        raise DataError(
            f"data file {path}: expected arrays 'X' (or 'features') and "
            f"{y_key or 'y'!r} (or 'targets'); found {sorted(arrays)}"
        )
    x, y = arrays[x_key], arrays[y_key]
    if x.ndim != 2 or len(x) == 0 or y.shape[:1] != x.shape[:1]:
        raise DataError(
            f"data file {path}: array {x_key!r} must be [N, F] with N >= 1 and "
            f"{y_key!r} [N] or [N, T]; got {x.shape} and {y.shape}"
        )
    features = _check_npz_features(x, path, x_key)
    names = [str(n) for n in arrays.get("feature_names", [f"x{i}" for i in range(x.shape[1])])]
    if len(names) != x.shape[1]:
        raise DataError(
            f"data file {path}: 'feature_names' has {len(names)} entries for "
            f"{x.shape[1]} feature columns"
        )
    targets, labels, task, why = _npz_targets(
        y, arrays.get("class_labels"), path, y_key, task, classes
    )
    return Dataset(features, targets, names, labels, task, str(path), why, y_key)


def _check_npz_features(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
        raise DataError(f"data file {path}: array {key!r} has dtype {x.dtype}, expected numbers")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"data file {path}: array {key!r}, column {col}, row {row + 1}: "
            f"{x[row, col]} is not a finite number"
        )
    return x


def _npz_targets(
    y: np.ndarray,
    labels: np.ndarray | None,
    path: Path,
    key: str,
    task: str | None,
    classes: list[str] | None,
) -> tuple[np.ndarray, list[str] | None, Task, str]:
    """[N, T] targets are regression; [N] follow the CSV rules, or index ``class_labels``."""
    if y.ndim == 2:
        if task == "classification":
            raise DataError(
                f"data file {path}: array {key!r} is {y.shape}; class labels must be [N]"
            )
        values = np.asarray(y, dtype=np.float32).reshape(len(y), -1)
        if not np.isfinite(values).all():
            row = int(np.argwhere(~np.isfinite(values))[0, 0])
            raise DataError(f"data file {path}: array {key!r}, row {row + 1}: target is not finite")
        constant = np.flatnonzero(values.min(axis=0) == values.max(axis=0))
        if classes is None and constant.size:
            raise DataError(
                f"data file {path}: array {key!r}, target column {int(constant[0])} is constant "
                f"({values[0, constant[0]]:g} in all {len(values)} rows); nothing to regress on"
            )
        return values, None, "regression", f"array {key!r} holds {y.shape[1]} target columns"
    if labels is not None and classes is not None:  # indices into the file's labels
        labels = np.asarray([str(v) for v in labels], dtype=object)
        y = labels[np.clip(y.astype(np.int64), 0, len(labels) - 1)]
    if labels is None or classes is not None or task == "regression":
        return _encode_targets(y, path, key, task, classes)
    # Explicit class_labels: y holds indices into them, in the file's own order.
    labels = [str(v) for v in labels]
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(labels):
        bad = (y < 0) | (y >= len(labels)) | (y != np.round(y))
        row = int(np.argmax(bad))
        raise DataError(
            f"data file {path}: array {key!r}, row {row + 1}: label {y[row]} is "
            f"out of range for {len(labels)} class_labels (0..{len(labels) - 1})"
        )
    targets = y.astype(np.int64)
    _check_classes(targets, labels, f"data file {path}: array {key!r}")
    return targets, labels, "classification", "array 'class_labels' names the classes"


# --------------------------------------------------------------------------------------------
# Splits


def split(dataset: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded train/validation split, stratified by class for classification.

    Each class sends round(val_fraction * count) of its rows to validation (at least one when the
    class has two or more rows), so rare classes appear on both sides.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    n = len(dataset)
    if n < 2:
        raise DataError(
            f"data {dataset.source}: {n} row(s); at least 2 are needed "
            "(one to train on, one to validate)"
        )
    rng = np.random.default_rng(seed)
    if dataset.task == "classification":
        val_index = _stratified_val_index(dataset.targets, val_fraction, rng)
    else:
        n_val = min(max(1, round(val_fraction * n)), n - 1)
        val_index = rng.permutation(n)[:n_val]
    is_val = np.zeros(n, dtype=bool)
    is_val[val_index] = True
    return dataset.subset(np.flatnonzero(~is_val)), dataset.subset(np.flatnonzero(is_val))


def split_three(
    dataset: Dataset, val_fraction: float, test_fraction: float, seed: int
) -> tuple[Dataset, Dataset, Dataset | None]:
    """(train, validation, test or None): test rows are set aside first (seed + 1), then
    validation takes ``val_fraction`` of all rows from the rest, both stratified by class."""
    if test_fraction <= 0:
        return (*split(dataset, val_fraction, seed), None)
    rest, test = split(dataset, test_fraction, seed + 1)
    train, val = split(rest, val_fraction / (1.0 - test_fraction), seed)
    return train, val, test


def _stratified_val_index(
    targets: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    chosen: list[np.ndarray] = []
    for cls in np.unique(targets):
        rows = rng.permutation(np.flatnonzero(targets == cls))
        n_val = round(val_fraction * len(rows))
        if len(rows) >= 2:
            n_val = min(max(n_val, 1), len(rows) - 1)
        chosen.append(rows[:n_val])
    val_index = np.concatenate(chosen)
    if len(val_index) == 0 or len(val_index) == len(targets):
        # Only singleton classes: fall back to a plain split so both sides have rows.
        n_val = min(max(1, round(val_fraction * len(targets))), len(targets) - 1)
        val_index = rng.permutation(len(targets))[:n_val]
    return val_index


def data_spec(
    dataset: Dataset,
    target: str | None,
    val_fraction: float,
    seed: int,
    test_fraction: float = 0.0,
    categorical: tuple[str, ...] = (),
    drop: tuple[str, ...] = (),
) -> dict[str, Any]:
    """What a checkpoint records so ``validation_split`` can rebuild the same rows later."""
    spec: dict[str, Any] = {
        "source": dataset.source,
        "target": target,
        "task": dataset.task,
        "seed": int(seed),
        "val_fraction": float(val_fraction),
    }
    if categorical:  # what --categorical named: the same columns again at export
        spec["categorical"] = list(categorical)
    if drop:  # the same columns left out again at export
        spec["drop"] = list(drop)
    if test_fraction > 0:
        spec["test_fraction"] = float(test_fraction)
    path = Path(dataset.source)
    if path.is_file():
        spec["source"] = str(path.resolve())
        spec["sha256"] = _sha256(path)
    return spec


def validation_split(spec: dict[str, Any]) -> tuple[Dataset, Dataset]:
    """The exact (train, validation) split a checkpoint's ``data_spec`` describes."""
    try:
        source, seed, fraction = spec["source"], int(spec["seed"]), float(spec["val_fraction"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"data_spec {spec!r} lacks source, seed or val_fraction") from exc
    expected = spec.get("sha256")
    if expected is not None and Path(source).is_file() and _sha256(Path(source)) != expected:
        raise DataError(
            f"data file {source} changed since training (sha256 differs from the "
            "checkpoint's data_spec); the validation rows cannot be reproduced"
        )
    categorical = tuple(spec.get("categorical", ()))
    drop = tuple(spec.get("drop", ()))
    dataset = load_source(source, spec.get("target"), spec.get("task"), categorical, drop)
    train, val, _ = split_three(dataset, fraction, float(spec.get("test_fraction", 0.0)), seed)
    return train, val


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Summary


def summarize(
    full: Dataset, parts: dict[str, Dataset | None], target: str | None, test_source: str | None
) -> dict[str, Any]:
    """What training is about to use, as plain JSON: printed first and written as data.json."""
    path = Path(full.source)
    summary: dict[str, Any] = {
        "source": full.source,
        "sha256": _sha256(path) if path.is_file() else None,
        "rows": len(full),
        "features": list(full.feature_names),
        "target": full.target or target,
        "task": full.task,
        "task_reason": full.task_reason or "built-in data set",
        "splits": {name: len(ds) for name, ds in parts.items() if ds is not None},
        "test_source": test_source,
        "dropped": [],  # nothing is dropped silently: bad rows or columns are errors
    }
    if full.warnings:
        summary["warnings"] = list(full.warnings)
    if full.blank_target_rows:
        summary["blank_target_rows"] = full.blank_target_rows
        summary["dropped"].append(f"{full.blank_target_rows} rows with a blank target")
    if full.task == "classification":
        labels = full.class_labels or []
        counts = np.bincount(full.targets, minlength=len(labels))
        summary["classes"] = {label: int(n) for label, n in zip(labels, counts, strict=True)}
    else:
        y = full.targets.astype(np.float64)
        summary["target_stats"] = {
            "mean": y.mean(axis=0).tolist(),
            "std": y.std(axis=0).tolist(),
            "min": y.min(axis=0).tolist(),
            "max": y.max(axis=0).tolist(),
        }
    if full.categorical_names:
        summary["categorical"] = list(full.categorical_names)
    if full.date_names:
        summary["dates"] = {
            name: {
                "missing_cells": int(np.isnan(full.dates[:, i]).sum()),
                "features": list(date_feature_names([name])),
            }
            for i, name in enumerate(full.date_names)
        }
    missing = np.isnan(full.features).sum(axis=0)
    if missing.any():
        summary["missing_cells"] = {
            n: int(m) for n, m in zip(full.feature_names, missing, strict=True) if m
        }
    if full.features.shape[1]:
        spans = np.nanmax(full.features, axis=0) - np.nanmin(full.features, axis=0)
        constant = [n for n, s in zip(full.feature_names, spans, strict=True) if s == 0]
        if constant:
            summary["constant_features"] = constant
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    features = summary["features"]
    shown = ", ".join(features[:8]) + (
        f", ... ({len(features)} in all)" if len(features) > 8 else ""
    )
    sha = summary["sha256"]
    lines = [
        f"data: {summary['source']}" + (f" (sha256 {sha[:12]})" if sha else ""),
        f"  rows {summary['rows']}, features: {shown}",
        f"  task: {summary['task']} ({summary['task_reason']})",
    ]
    if "classes" in summary:
        classes = summary["classes"]
        items = ", ".join(f"{k}: {v}" for k, v in list(classes.items())[:12])
        lines.append(f"  classes ({len(classes)}): {items}{' ...' if len(classes) > 12 else ''}")
    else:
        stats = summary["target_stats"]
        lines.append(
            "  target: "
            + "; ".join(
                f"mean {m:.4g}, std {s:.4g}, min {lo:.4g}, max {hi:.4g}"
                for m, s, lo, hi in zip(
                    stats["mean"], stats["std"], stats["min"], stats["max"], strict=True
                )
            )
        )
    lines.append("  splits: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    if summary.get("categorical"):
        sizes = summary.get("vocabulary_sizes", {})
        shown = [
            f"{c} ({sizes[c]} values + other)" if c in sizes else c for c in summary["categorical"]
        ]
        lines.append(f"  categorical: {', '.join(shown)}")
    if summary.get("missing_cells"):
        cells = ", ".join(f"{k} {v}" for k, v in summary["missing_cells"].items())
        lines.append(f"  missing numeric cells (imputed): {cells}")
    for name, info in summary.get("dates", {}).items():
        missing = f", {info['missing_cells']} missing (imputed)" if info["missing_cells"] else ""
        parts = ", ".join(f.rsplit(".", 1)[-1] for f in info["features"])
        lines.append(
            f"  date column {name}: features {parts} computed in the model from seconds since "
            f"1970 UTC{missing}"
        )
    for warning in summary.get("warnings", []):
        lines.append(f"  warning: {warning}")
    if summary.get("blank_target_rows"):
        lines.append(f"  dropped {summary['blank_target_rows']} rows with a blank target")
    if summary.get("dropped_columns"):
        lines.append(f"  dropped columns (--drop): {summary['dropped_columns']}")
    if summary.get("early_stopping"):
        lines.append(f"  early stopping: {summary['early_stopping']}")
    if summary.get("constant_features"):
        lines.append(f"  constant features (kept, carry no signal): {summary['constant_features']}")
    return "\n".join(lines)
