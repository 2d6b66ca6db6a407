"""Date features (bnmodel/dates.py) against Python's calendar, and the reader's date cells."""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow as pa
import pytest

from bnmodel import table
from bnmodel.dates import DATE_PARTS, date_features, feature_names, origin_day

EPOCH = datetime.datetime(1970, 1, 1)


def _expected(seconds: float, origin: float) -> list[float]:
    when = EPOCH + datetime.timedelta(seconds=seconds)
    hour = when.hour + when.minute / 60 + (when.second + when.microsecond / 1e6) / 3600
    return [seconds / 86400 - origin, hour, when.weekday(), when.month, when.day]


def test_features_match_pythons_calendar_over_three_thousand_years():
    rng = np.random.default_rng(0)
    seconds = np.round(rng.uniform(-5e10, 5e10, 5000), 3)  # years 385 .. 3554
    seconds[:4] = [0.0, -1.0, 951782400.0, 951868799.5]  # epoch, its eve, 2000-02-29 (leap)
    got = date_features(seconds[:, None], [100.0])
    assert got.shape == (5000, len(DATE_PARTS)) and got.dtype == np.float32
    for i in range(len(seconds)):
        want = np.asarray(_expected(seconds[i], 100.0), np.float32)
        np.testing.assert_array_equal(got[i, 2:], want[2:])  # weekday, month, day: exact
        np.testing.assert_allclose(got[i, :2], want[:2], rtol=1e-6, atol=1e-4)


def test_missing_seconds_give_missing_features_and_columns_stay_apart():
    seconds = np.array([[0.0, np.nan], [np.nan, 86400.0 * 365]])
    got = date_features(seconds, [0.0, 365.0])
    assert np.isnan(got[0, 5:]).all() and np.isnan(got[1, :5]).all()
    np.testing.assert_array_equal(got[0, :5], [0, 0, 3, 1, 1])  # Thursday 1970-01-01
    np.testing.assert_array_equal(got[1, 5:], [0, 0, 4, 1, 1])  # Friday 1971-01-01
    assert feature_names(["when"]) == tuple(f"when.{p}" for p in DATE_PARTS)


def test_origin_is_the_first_whole_day():
    assert origin_day(np.array([np.nan, 86400 * 3 + 5.0, 86400 * 9.0])) == 3.0
    assert origin_day(np.array([-1.0])) == -1.0
    assert np.isnan(origin_day(np.array([np.nan])))


def _seconds(cells, **kwargs):
    column = pa.array(cells, pa.string())
    return table.date_seconds(column, "when", "input t.csv", allow_missing=True, **kwargs)


def test_reader_takes_iso_text_typed_dates_and_numbers():
    t = datetime.datetime(2024, 1, 31, 8, 15, tzinfo=datetime.UTC).timestamp()
    got = _seconds(
        ["2024-01-31T08:15", " 2024-01-31 08:15:00 ", "2024-01-31T10:15+02:00", "2024-01-31T08:15Z"]
        + ["2024-01-31 08:15:00.123456789", str(t), "NA", "", None, "2024-01-31"]
    )
    np.testing.assert_array_equal(got[:4], [t] * 4)
    assert got[4] == pytest.approx(t + 0.123456, abs=1e-6) and got[5] == t
    assert np.isnan(got[6:9]).all() and got[9] == t - 8.25 * 3600
    # Beyond 2**53 microseconds from 1970, and nanosecond digits beside them.
    far = _seconds(["1500-03-01", "2400-01-01T00:00:00.123456789"])
    np.testing.assert_array_equal(
        far, [(datetime.datetime(1500, 3, 1) - EPOCH).total_seconds(), 13569465600.123456]
    )
    typed = pa.array([datetime.date(2024, 1, 31), None])
    np.testing.assert_array_equal(
        table.date_seconds(typed, "d", "x", allow_missing=True), [t - 8.25 * 3600, np.nan]
    )
    aware = pa.array([0, 3_600_000_000], pa.timestamp("us", tz="Europe/Paris"))
    np.testing.assert_array_equal(
        table.date_seconds(aware, "d", "x", allow_missing=True), [0, 3600]
    )


def test_a_cell_that_is_no_date_names_row_line_and_value():
    with pytest.raises(
        table.TableError, match=r"column 'when', row 3 \(line 4\): 'soon' is not a date"
    ):
        _seconds(["2024-01-01", "2024-01-02", "soon"], line0=2)
    with pytest.raises(table.TableError, match="'2024-02-30' is not a date"):
        _seconds(["2024-02-30"])
    with pytest.raises(table.TableError, match="row 2: value is missing"):
        table.date_seconds(pa.array(["2024-01-01", ""]), "when", "x", allow_missing=False)
    with pytest.raises(table.TableError, match="holds bool, not dates"):
        table.date_seconds(pa.array([True]), "when", "x", allow_missing=True)
