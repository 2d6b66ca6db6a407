"""Counting categorical cells in the "other" slot: the graph's rule, the log line, /metrics."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parent))
from bnmodel.serve import categories  # noqa: E402
from bnmodel.serve.categories import WINDOW_CELLS, CategoryCounts, category_counts  # noqa: E402
from bnmodel.serve.metrics import (  # noqa: E402
    CATEGORY_CELLS_METRIC,
    CATEGORY_UNSEEN_METRIC,
    StatsCollector,
)
from bnmodel.serve.statistics import VersionStats  # noqa: E402
from models import RAW_VOCABULARIES, raw_model, raw_other_slots  # noqa: E402

from bnmodel.contract import ModelContract  # noqa: E402
from bnmodel.unseen import UnseenText  # noqa: E402

STRINGS = frozenset(RAW_VOCABULARIES)
# Text the graph compares exactly as sent: case, spaces around, accents, blanks, look-alikes.
CELLS = {
    "color": ["red", "Red", " red", "red ", "", "green", "grün", "blue", "blue\n", "RED", "red"],
    "size": ["S", "s", "M", "XL", "XXL", "", "L", " L", "M", "S", "xl"],
}


def _counts(model: onnx.ModelProto, parameters=None) -> CategoryCounts | None:
    metadata = {p.key: p.value for p in model.metadata_props}
    return category_counts("raw", "1", metadata, parameters or {}, STRINGS)


def _inputs(cells: dict[str, list[str]]) -> dict[str, np.ndarray]:
    return {c: np.array(v, dtype=object).reshape(-1, 1) for c, v in cells.items()}


def test_unseen_cells_are_exactly_those_the_graph_sends_to_the_other_slot():
    model = raw_model(seed=4, preprocessing=True)
    counts = _counts(model)
    counts.add(_inputs(CELLS))
    counts.add(_inputs(CELLS))
    graph = raw_other_slots(model, CELLS)
    assert graph == {"color": 7, "size": 5}  # the test cells are what they claim to be
    for column in counts.columns:
        assert column.cells == 2 * len(CELLS[column.name])
        assert column.unseen == 2 * graph[column.name]
    # The same as predict/evaluate's count (blank cells included in "other")
    local = UnseenText(ModelContract.from_metadata({p.key: p.value for p in model.metadata_props}))
    local.add(_inputs(CELLS))
    assert local.other == [graph["color"], graph["size"]]


def test_vocabularies_come_from_the_graphs_metadata_before_the_config():
    model = raw_model(seed=4, preprocessing=True)
    stale = {"color": ["red"], "size": ["S"]}  # a config written for another version
    parameters = ModelContract(
        "classification",
        categorical_columns=tuple(stale),
        vocabularies=tuple(tuple(v) for v in stale.values()),
    ).to_parameters()
    counts = _counts(model, parameters)
    assert [sorted(c.known) for c in counts.columns] == [
        sorted(RAW_VOCABULARIES["color"]),
        sorted(RAW_VOCABULARIES["size"]),
    ]
    # Without vocabularies in the metadata, the config's are used.
    from_config = _counts(raw_model(seed=4), parameters)
    assert [sorted(c.known) for c in from_config.columns] == [["red"], ["S"]]


def test_nothing_is_counted_without_categorical_columns_or_vocabularies():
    assert _counts(raw_model(seed=4)) is None  # a contract without vocabularies
    numeric = raw_model(seed=4, vocabularies={}, preprocessing=True)
    assert _counts(numeric) is None
    assert category_counts("m", "1", {}, {}, frozenset()) is None  # not a bnmodel model
    # Columns that are not string inputs of the model: not the graph bnmodel exports
    model = raw_model(seed=4, preprocessing=True)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert category_counts("raw", "1", metadata, {}, frozenset({"color"})) is None


def test_a_malformed_contract_turns_counting_off_with_one_warning(caplog):
    metadata = {"bnmodel.task": "classification", "bnmodel.categorical_columns": "{oops"}
    with caplog.at_level(logging.WARNING, "bnmodel.serve"):
        assert category_counts("m", "3", metadata, {}, STRINGS) is None
    assert "model 'm' version 3" in caplog.text and "categorical_columns" in caplog.text


def _window(counts: CategoryCounts, unseen: int, cells: int = WINDOW_CELLS) -> None:
    values = ["Blue"] * unseen + ["red"] * (cells - unseen)
    counts.add({"color": np.array(values, object).reshape(-1, 1), "size": _inputs(CELLS)["size"]})


def test_a_high_unseen_share_is_logged_once_per_column_per_minute(caplog, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(categories.time, "monotonic", lambda: now[0])
    counts = _counts(raw_model(seed=4, preprocessing=True))
    with caplog.at_level(logging.WARNING, "bnmodel.serve"):
        _window(counts, unseen=100)  # exactly 10%: not more than the threshold
        assert caplog.records == []
        _window(counts, unseen=300)  # 30%
        (record,) = caplog.records
        text = record.getMessage()
        assert "model 'raw' version 1 column 'color'" in text
        assert "30% of the last 1000 cells (300)" in text and "e.g. 'Blue' (300)" in text
        _window(counts, unseen=500)  # within the minute: quiet
        assert len(caplog.records) == 1
        now[0] += 61
        _window(counts, unseen=500)
        assert len(caplog.records) == 2 and "50% of the last 1000" in caplog.records[1].message
    # "size" got 11 cells per window (5 unseen): never 1000 of them yet, so never logged
    assert all("column 'size'" not in r.getMessage() for r in caplog.records)
    color = counts.columns[0]
    assert (color.cells, color.unseen) == (4 * WINDOW_CELLS, 1400)


def test_the_collector_exposes_cells_and_unseen_per_column_and_nothing_without_them():
    counts = _counts(raw_model(seed=4, preprocessing=True))
    counts.add(_inputs(CELLS))
    entries = [("raw", "1", VersionStats(categories=counts)), ("clf", "1", VersionStats())]
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: entries))
    text = generate_latest(registry).decode()
    assert f'{CATEGORY_CELLS_METRIC}{{column="color",model="raw",version="1"}} 11.0' in text
    assert f'{CATEGORY_UNSEEN_METRIC}{{column="color",model="raw",version="1"}} 7.0' in text
    assert f'{CATEGORY_UNSEEN_METRIC}{{column="size",model="raw",version="1"}} 5.0' in text
    assert re.search(r"^# TYPE bnmodel_category_unseen(_total)? counter$", text, re.MULTILINE)
    assert 'model="clf"' not in text.split(CATEGORY_CELLS_METRIC, 1)[1]

    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: entries[1:]))
    assert "bnmodel_category" not in generate_latest(registry).decode()


@pytest.mark.parametrize("rows", [1, 1024])
def test_counting_leaves_the_inputs_as_they_were(rows):
    counts = _counts(raw_model(seed=4, preprocessing=True))
    inputs = _inputs({c: (v * rows)[:rows] for c, v in CELLS.items()})
    before = {c: a.copy() for c, a in inputs.items()}
    counts.add(inputs)
    assert all(np.array_equal(inputs[c], before[c]) for c in inputs)
    assert [c.cells for c in counts.columns] == [rows, rows]


def test_the_data_plane_counts_only_when_metrics_are_served(tmp_path):
    from bnmodel.serve.codec import encode_raw
    from bnmodel.serve.dataplane import DataPlane
    from bnmodel.serve.repository import ModelRepository
    from bnmodel.serve.session import SessionFactory
    from bnmodel.serve.validation import InferInput, InferRequest
    from models import raw_config_text, write_model

    write_model(tmp_path, "raw", raw_model(seed=4, preprocessing=True), raw_config_text("raw"))
    inputs = {"features": np.zeros((11, 3), np.float32), **_inputs(CELLS)}
    tensors = []
    for name, array in inputs.items():
        datatype, raw = encode_raw(array)
        tensors.append(InferInput(name, datatype.name, array.shape, raw=raw))
    request = InferRequest("raw", inputs=tuple(tensors), raw_count=len(tensors))
    with ThreadPoolExecutor(1) as executor:
        plane = DataPlane(ModelRepository(tmp_path), SessionFactory("cpu", 1), executor)
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(plane.load_all())
            counts = plane.model("raw")[1].stats.categories
            loop.run_until_complete(plane.infer(request))  # no --metrics-port: not counted
            assert [c.cells for c in counts.columns] == [0, 0]
            plane.count_categories = True
            loop.run_until_complete(plane.infer(request))
        finally:
            loop.close()
    assert [(c.cells, c.unseen) for c in counts.columns] == [(11, 7), (11, 5)]
