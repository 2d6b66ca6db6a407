"""Date and datetime columns as numeric features: the arithmetic training and the graph share.

A date column reaches a model as seconds since 1970-01-01 00:00 UTC, float64, NaN for a missing
cell: the table reader (``bnmodel.table.date_seconds``) turns ISO 8601 text, typed dates and
timestamps into it, and a client may send it as it is. Each date column gives five features:

    days     days since the column's origin (its first training day), with the time of day as a
             fraction
    hour     hour of the day, 0 <= hour < 24, minutes as a fraction
    weekday  0 Monday .. 6 Sunday
    month    1 .. 12
    day      day of the month, 1 .. 31

The calendar is the proleptic Gregorian one, by Howard Hinnant's days-to-civil algorithm:
divisions of whole numbers and floors only, which float64 computes exactly for any date
within a million years. The steps are written once (``date_parts``) over an ``Arithmetic``:
numpy here, ONNX nodes in ``export/onnx_export.py``. Both run the same IEEE float64
operations in the same order, so the features a model trains on and the ones its exported
graph computes are the same float32 bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

__all__ = [
    "DATE_PARTS",
    "SECONDS_PER_DAY",
    "Arithmetic",
    "date_features",
    "date_parts",
    "feature_names",
    "origin_day",
]

DATE_PARTS = ("days", "hour", "weekday", "month", "day")
SECONDS_PER_DAY = 86400.0
_EPOCH_WEEKDAY = 3.0  # 1970-01-01 was a Thursday (Monday is 0)

V = TypeVar("V")


class Arithmetic(Protocol[V]):
    """Element-wise float64 operations on values of type V; ``b`` may be a Python float."""

    def add(self, a: V, b: V | float) -> V: ...
    def sub(self, a: V, b: V | float) -> V: ...
    def mul(self, a: V, b: V | float) -> V: ...
    def div(self, a: V, b: V | float) -> V: ...
    def floor(self, a: V) -> V: ...
    def below(self, a: V, limit: float, yes: V, no: V) -> V:
        """``yes`` where a < limit, else ``no``."""
        ...


def date_parts(seconds: V, origin: float, ops: Arithmetic[V]) -> list[V]:
    """[days, hour, weekday, month, day] of ``seconds`` since 1970 (``origin``: whole days)."""
    fraction = ops.div(seconds, SECONDS_PER_DAY)
    day = ops.floor(fraction)  # whole days since 1970-01-01
    days = ops.sub(fraction, origin)
    hour = ops.div(ops.sub(seconds, ops.mul(day, SECONDS_PER_DAY)), 3600.0)
    shifted = ops.add(day, _EPOCH_WEEKDAY)
    weekday = ops.sub(shifted, ops.mul(ops.floor(ops.div(shifted, 7.0)), 7.0))
    # Days -> (month, day of month): the year starts on March 1st so that February is last.
    z = ops.add(day, 719468.0)  # days since 0000-03-01
    era = ops.floor(ops.div(z, 146097.0))  # 400-year cycles
    doe = ops.sub(z, ops.mul(era, 146097.0))  # day of the era, 0 .. 146096
    leap_days = ops.add(
        ops.sub(ops.floor(ops.div(doe, 1460.0)), ops.floor(ops.div(doe, 36524.0))),
        ops.floor(ops.div(doe, 146096.0)),
    )
    yoe = ops.floor(ops.div(ops.sub(doe, leap_days), 365.0))  # year of the era, 0 .. 399
    year_start = ops.sub(
        ops.add(ops.mul(yoe, 365.0), ops.floor(ops.div(yoe, 4.0))),
        ops.floor(ops.div(yoe, 100.0)),
    )
    doy = ops.sub(doe, year_start)  # day of the March-based year, 0 .. 365
    mp = ops.floor(ops.div(ops.add(ops.mul(doy, 5.0), 2.0), 153.0))  # month from March, 0 .. 11
    month_start = ops.floor(ops.div(ops.add(ops.mul(mp, 153.0), 2.0), 5.0))
    day_of_month = ops.add(ops.sub(doy, month_start), 1.0)
    month = ops.below(mp, 10.0, ops.add(mp, 3.0), ops.sub(mp, 9.0))
    return [days, hour, weekday, month, day_of_month]


class _Numpy:
    def add(self, a: Any, b: Any) -> Any:
        return a + b

    def sub(self, a: Any, b: Any) -> Any:
        return a - b

    def mul(self, a: Any, b: Any) -> Any:
        return a * b

    def div(self, a: Any, b: Any) -> Any:
        return a / b

    def floor(self, a: Any) -> Any:
        return np.floor(a)

    def below(self, a: Any, limit: float, yes: Any, no: Any) -> Any:
        return np.where(a < limit, yes, no)


def feature_names(columns: Sequence[str]) -> tuple[str, ...]:
    """The model's names for the features of ``columns``: "when.days", "when.hour", ..."""
    return tuple(f"{column}.{part}" for column in columns for part in DATE_PARTS)


def date_features(seconds: np.ndarray, origins: Sequence[float]) -> np.ndarray:
    """(N, D) float64 seconds of D date columns -> (N, 5 D) float32 features, column by column
    (NaN seconds give NaN features: the model imputes them as any missing number)."""
    seconds = np.asarray(seconds, dtype=np.float64).reshape(-1, len(origins))
    out = np.empty((len(seconds), len(DATE_PARTS) * len(origins)), dtype=np.float32)
    for i, origin in enumerate(origins):
        with np.errstate(invalid="ignore"):
            parts = date_parts(seconds[:, i], float(origin), _Numpy())
        for j, part in enumerate(parts):
            out[:, i * len(DATE_PARTS) + j] = part
    return out


def origin_day(seconds: np.ndarray) -> float:
    """The whole day (since 1970) of the first date in ``seconds``; NaN when none is filled."""
    seconds = np.asarray(seconds, dtype=np.float64)
    if np.isnan(seconds).all():
        return float("nan")
    return float(np.floor(np.nanmin(seconds) / SECONDS_PER_DAY))
