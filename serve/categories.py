"""Categorical cells in the "other" slot, counted per model version and column for /metrics.

A raw-row model's graph gives text exactly as sent (not trimmed, not case-folded) that is in the
column's vocabulary its own slot, and anything else (unseen text, a blank cell) the shared
"other" slot: accuracy lost without an error. The server counts those cells by the same rule,
one set lookup per cell, and only with --metrics-port (``DataPlane.count_categories``); a column
whose recent share passes ``UNSEEN_SHARE`` gets a log line, at most once a minute.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import filterfalse

import numpy as np

from bnmodel.contract import METADATA_PREFIX, ContractError, ModelContract
from bnmodel.unseen import UNSEEN_SHARE

__all__ = ["UNSEEN_SHARE", "WINDOW_CELLS", "CategoryColumn", "CategoryCounts", "category_counts"]

log = logging.getLogger("bnmodel.serve")

WINDOW_CELLS = 1000  # cells a column's share is judged over before a log line
LOG_INTERVAL_S = 60.0  # at most one log line per column this often
SHOWN_VALUES = 3
SHOWN_CHARS = 40


@dataclass
class CategoryColumn:
    """One categorical input: its vocabulary and counters (updated on the event loop)."""

    name: str
    known: frozenset[str]  # text with a slot of its own
    cells: int = 0
    unseen: int = 0  # cells in the "other" slot
    # The log line's window: the counts where it began, its unseen values (at most a window
    # and a request of them), the time of the last line.
    window_cells: int = 0
    window_unseen: int = 0
    values: Counter[str] = field(default_factory=Counter)
    logged_at: float = float("-inf")  # time.monotonic()


@dataclass
class CategoryCounts:
    """The categorical columns of one model version and their cells in the "other" slot."""

    model: str
    version: str
    columns: tuple[CategoryColumn, ...]

    def add(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Count one request's decoded, validated inputs (each column an object array of str).

        The set lookup hashes each cell (about 50 ns, most of the cost); the rest is per column.
        """
        for column in self.columns:
            cells = inputs[column.name].ravel().tolist()  # a list iterates faster
            column.cells += len(cells)
            unseen = list(filterfalse(column.known.__contains__, cells))
            if unseen:
                column.unseen += len(unseen)
                column.values.update(unseen)  # C-counted, hashes cached: cleared every window
            if column.cells - column.window_cells >= WINDOW_CELLS:
                self._end_window(column)

    def _end_window(self, column: CategoryColumn) -> None:
        cells = column.cells - column.window_cells
        unseen = column.unseen - column.window_unseen
        now = time.monotonic()
        if unseen > UNSEEN_SHARE * cells and now - column.logged_at >= LOG_INTERVAL_S:
            column.logged_at = now
            shown = ", ".join(
                f"{v[:SHOWN_CHARS]!r} ({n})" for v, n in column.values.most_common(SHOWN_VALUES)
            )
            log.warning(
                "model %r version %s column %r: %.0f%% of the last %d cells (%d) fell into the "
                '"other" slot (text not in the vocabulary, exactly as written, or blank), '
                "e.g. %s",
                self.model,
                self.version,
                column.name,
                100 * unseen / cells,
                cells,
                unseen,
                shown,
            )
        column.window_cells, column.window_unseen = column.cells, column.unseen
        column.values.clear()


def category_counts(
    model: str,
    version: str,
    metadata: Mapping[str, str],
    parameters: Mapping[str, str],
    string_inputs: frozenset[str],
) -> CategoryCounts | None:
    """Counters for a version whose contract names categorical columns with vocabularies.

    The vocabularies come from the version's ONNX ``metadata`` (what its graph was built from),
    else from config.pbtxt's ``parameters``. None (nothing counted, no series shown) for a model
    without categorical columns or vocabularies, or whose columns are not ``string_inputs``.
    """
    where = f"model {model!r} version {version}"
    try:
        contract = None
        if METADATA_PREFIX + "task" in metadata:
            contract = ModelContract.from_metadata(metadata, source=where)
        if contract is None or contract.vocabularies is None:
            contract = ModelContract.from_parameters(parameters, source=where)
    except ContractError as exc:  # the model still serves; only the counting is off
        log.warning("%s; unseen categorical text is not counted", exc, extra={"once": True})
        return None
    names, vocabularies = contract.categorical_columns, contract.vocabularies
    if not names or vocabularies is None or not set(names) <= string_inputs:
        return None
    columns = tuple(
        CategoryColumn(name, frozenset(vocabulary))
        for name, vocabulary in zip(names, vocabularies, strict=True)
    )
    return CategoryCounts(model, version, columns)
