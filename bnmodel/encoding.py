"""Raw table columns -> model inputs: missing-value imputation and categorical vocabularies.

Fitted on the training rows only and stored in the checkpoint (``Preprocessing.to_dict``), so
export and predict need nothing else. Everything here is numpy and pandas; the model's
``Encode`` layer (bnmodel/model.py) and the exported graph apply the same rules:

    numeric column j     NaN -> impute_values[j] (training mean or median); a missing indicator
                         1.0/0.0 for each column in ``indicators`` (it had missing training cells)
    categorical column   exact text -> index in its vocabulary (most frequent first); "" (a blank
                         cell), a rare value and a value never seen in training -> the "other"
                         slot, index len(vocabulary)
    date column          seconds since 1970 -> five numeric features (bnmodel/dates.py), which
                         then impute and standardize as numeric columns

The model's raw input is one float32 row per table row: the numeric columns (NaN = missing),
the date features, then each categorical column's slot index as a float (exact below 2**24).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bnmodel import dates as date_math

__all__ = [
    "IMPUTE_STRATEGIES",
    "EncodingError",
    "Preprocessing",
    "CSV_TEXT_TYPE",
    "category_text",
    "csv_category_text",
    "fit_preprocessing",
]

IMPUTE_STRATEGIES = ("mean", "median")


class EncodingError(ValueError):
    """Columns cannot be encoded as asked; the message names the column and the flag."""


@dataclass(frozen=True)
class Preprocessing:
    numeric: tuple[str, ...]  # the `features` columns, in order
    impute: str  # "mean" or "median" of the training rows
    impute_values: tuple[float, ...]  # one per model numeric column (``model_numeric``)
    indicators: tuple[str, ...]  # model numeric columns with a missing indicator (in order)
    categorical: tuple[str, ...]  # one string input each, in order
    vocabularies: tuple[tuple[str, ...], ...]  # per categorical column; "other" is index len()
    min_count: int = 1  # a value needs this many training rows to get its own slot
    max_size: int = 0  # at most this many values per vocabulary (0: no limit)
    dates: tuple[str, ...] = ()  # one float64 input of seconds since 1970 each, in order
    date_origins: tuple[float, ...] = ()  # per date column: its first training day

    @property
    def model_numeric(self) -> tuple[str, ...]:
        """The model's numeric block: the ``features`` columns, then the date features."""
        return (*self.numeric, *date_math.feature_names(self.dates))

    @property
    def indicator_index(self) -> tuple[int, ...]:
        return tuple(self.model_numeric.index(name) for name in self.indicators)

    @property
    def category_sizes(self) -> tuple[int, ...]:
        """Slots per categorical column: its vocabulary plus the shared "other" slot."""
        return tuple(len(v) + 1 for v in self.vocabularies)

    def codes(self, categories: np.ndarray) -> np.ndarray:
        """(N, C) text -> (N, C) int64 slot indices; anything outside a vocabulary -> other."""
        import pandas as pd

        categories = np.asarray(categories, dtype=object).reshape(len(categories), -1)
        out = np.empty(categories.shape, dtype=np.int64)
        for i, vocab in enumerate(self.vocabularies):
            index = pd.Index(vocab, dtype=object).get_indexer(categories[:, i])
            out[:, i] = np.where(index < 0, len(vocab), index)
        return out

    def model_input(
        self, numeric: np.ndarray, categories: np.ndarray | None, dates: np.ndarray | None = None
    ) -> np.ndarray:
        """(N, F + 5 D + C) float32: numeric values (NaN kept: the model imputes), the date
        features of ``dates`` (N, D) seconds, then slot indices."""
        numeric = np.asarray(numeric, dtype=np.float32).reshape(len(numeric), len(self.numeric))
        parts = [numeric]
        if self.dates:
            if dates is None:
                raise EncodingError(f"date columns {list(self.dates)} are missing")
            parts.append(date_math.date_features(dates, self.date_origins))
        if self.categorical:
            if categories is None:
                raise EncodingError(f"categorical columns {list(self.categorical)} are missing")
            parts.append(self.codes(categories).astype(np.float32))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: lists and strings (checkpoints, ONNX metadata ``bnmodel.preprocessing``)."""
        d = asdict(self)
        for key in ("numeric", "impute_values", "indicators", "categorical", "dates"):
            d[key] = list(d[key])
        d["date_origins"] = list(self.date_origins)
        d["vocabularies"] = {
            c: list(v) for c, v in zip(self.categorical, self.vocabularies, strict=True)
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        categorical = tuple(d["categorical"])
        vocabularies = d["vocabularies"]
        return cls(
            numeric=tuple(d["numeric"]),
            impute=d["impute"],
            impute_values=tuple(float(v) for v in d["impute_values"]),
            indicators=tuple(d["indicators"]),
            categorical=categorical,
            vocabularies=tuple(tuple(vocabularies[c]) for c in categorical),
            min_count=int(d.get("min_count", 1)),
            max_size=int(d.get("max_size", 0)),
            dates=tuple(d.get("dates", ())),
            date_origins=tuple(float(v) for v in d.get("date_origins", ())),
        )


def category_text(values: Any) -> np.ndarray:
    """Cells of one categorical column as exact text, "" for a missing cell (N,) object.

    Typed columns (Parquet, pandas) go through Arrow's cast to string, the same cast predict
    applies, so training and prediction agree on the text of a bool or an integer.
    """
    import pyarrow as pa

    array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else None
    if array is None:
        array = pa.array(np.asarray(values, dtype=object), from_pandas=True)
    if isinstance(array, pa.ChunkedArray):
        parts = [category_text(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else np.empty(0, dtype=object)
    if pa.types.is_dictionary(array.type):
        # Text of the few distinct values, then a take by index: no string per row is built.
        text = np.append(category_text(array.dictionary), "")
        return text[array.indices.fill_null(len(text) - 1).to_numpy(zero_copy_only=False)]
    if not pa.types.is_string(array.type):
        array = array.cast(pa.string())
    return np.asarray(array.fill_null("").to_numpy(zero_copy_only=False), dtype=object)


def _csv_text_type() -> Any:
    import pyarrow as pa

    return pa.dictionary(pa.int32(), pa.string())


# How a CSV's categorical columns are read (training and predict alike): dictionary-encoded
# text, so a column's text is built once per distinct value, not once per row.
CSV_TEXT_TYPE = _csv_text_type


def csv_category_text(column: Any) -> np.ndarray:
    """A CSV column read as ``CSV_TEXT_TYPE()`` -> exact text, leading spaces dropped (as
    pandas' skipinitialspace does), "" for a blank cell (N,) object."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        parts = [csv_category_text(chunk) for chunk in column.chunks]
        return np.concatenate(parts) if parts else np.empty(0, dtype=object)
    if pa.types.is_dictionary(column.type):
        trimmed = pc.utf8_ltrim_whitespace(column.dictionary)
        return category_text(pa.DictionaryArray.from_arrays(column.indices, trimmed))
    return category_text(pc.utf8_ltrim_whitespace(column))


def _impute_values(numeric: np.ndarray, names: Sequence[str], how: str) -> np.ndarray:
    """(F,) float64 training mean or median per column, ignoring missing cells; one column at
    a time, so no float64 copy of the whole table is made."""
    values = np.empty(len(names))
    for j, name in enumerate(names):
        column = numeric[:, j].astype(np.float64)
        if np.isnan(column).all():
            raise EncodingError(
                f"numeric column {name!r} is missing in every training row; drop the column"
            )
        values[j] = np.nanmedian(column) if how == "median" else np.nanmean(column)
    return values


def _vocabulary(column: np.ndarray, name: str, min_count: int, max_size: int) -> tuple[str, ...]:
    """Values seen >= min_count times (blank excluded), most frequent first (ties by text),
    at most max_size of them (0: no limit)."""
    import pandas as pd

    counts = pd.Series(column[column != ""], dtype=object).value_counts(sort=False)
    kept = counts[counts >= min_count]
    if len(kept) == 0:
        top = f"; its most frequent value occurs {int(counts.max())} times" if len(counts) else ""
        raise EncodingError(
            f"categorical column {name!r}: no value occurs in at least {min_count} training "
            f"rows (--min-category-count){top}; lower the flag, or pass --drop {name} (a "
            "column unique per row, such as an id, cannot generalize)"
        )
    order = sorted(
        zip(kept.index, kept.to_numpy(), strict=True), key=lambda kv: (-kv[1], str(kv[0]))
    )
    if max_size > 0:
        order = order[:max_size]
    return tuple(str(value) for value, _ in order)


def fit_preprocessing(
    numeric: np.ndarray,
    numeric_names: Sequence[str],
    categories: np.ndarray | None,
    categorical_names: Sequence[str],
    *,
    impute: str = "mean",
    indicators: bool = True,
    min_count: int = 1,
    max_size: int = 0,
    dates: np.ndarray | None = None,
    date_names: Sequence[str] = (),
) -> Preprocessing:
    """Imputation values, indicator columns, vocabularies and date origins from the TRAINING
    rows.

    numeric (N, F) float with NaN for missing cells; categories (N, C) text with "" for missing;
    dates (N, D) float64 seconds since 1970, NaN for missing.
    """
    if impute not in IMPUTE_STRATEGIES:
        raise EncodingError(f"--impute must be one of {IMPUTE_STRATEGIES}, got {impute!r}")
    numeric = np.asarray(numeric).reshape(len(numeric), len(numeric_names))
    origins = _date_origins(dates, date_names)
    blocks = [(numeric, list(numeric_names))]
    if date_names:
        derived = date_math.date_features(dates, origins)  # (N, 5 D) float32, small
        blocks.append((derived, list(date_math.feature_names(date_names))))
    names = [n for _, block_names in blocks for n in block_names]
    values = np.concatenate([_impute_values(x, n, impute) if n else np.empty(0) for x, n in blocks])
    missing = (
        np.concatenate([np.isnan(x).any(axis=0) for x, _ in blocks])
        if indicators
        else np.zeros(len(names), bool)
    )
    vocabularies = tuple(
        _vocabulary(np.asarray(categories)[:, i], name, min_count, max_size)
        for i, name in enumerate(categorical_names)
    )
    return Preprocessing(
        numeric=tuple(numeric_names),
        impute=impute,
        impute_values=tuple(float(v) for v in values),
        indicators=tuple(n for n, m in zip(names, missing, strict=True) if m),
        categorical=tuple(categorical_names),
        vocabularies=vocabularies,
        min_count=min_count,
        max_size=max_size,
        dates=tuple(date_names),
        date_origins=origins,
    )


def _date_origins(dates: np.ndarray | None, names: Sequence[str]) -> tuple[float, ...]:
    """Per date column, its first training day (whole days since 1970)."""
    if not names:
        return ()
    seconds = np.asarray(dates, dtype=np.float64).reshape(-1, len(names))
    origins = tuple(date_math.origin_day(seconds[:, i]) for i in range(len(names)))
    for name, origin in zip(names, origins, strict=True):
        if np.isnan(origin):
            raise EncodingError(
                f"date column {name!r} is missing in every training row; drop the column"
            )
    return origins
