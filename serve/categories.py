"""Categorical cells in the "other" slot, counted per model version and column for /metrics.

A raw-row model maps each categorical cell to a slot with its graph's LabelEncoder: text exactly
as sent (not trimmed, not case-folded) that is in the column's vocabulary gets its own slot;
anything else (text training never saw or saw too rarely, a blank cell) the shared "other"
slot. That costs accuracy without any error, so the server counts those cells with the same
rule, one set lookup per decoded cell, and exposes ``bnmodel_category_cells_total`` and
``bnmodel_category_unseen_total`` per model, version and column (only with --metrics-port:
``DataPlane.count_categories``). The vocabularies are the version's own (its ONNX metadata,
what its graph was built from), else config.pbtxt's.

When more than ``UNSEEN_SHARE`` of a column's last ``WINDOW_CELLS`` (or more) cells were unseen,
one log line names the model, column and the most frequent unseen values, at most once a
minute per column.
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

    ``metadata``: the version's ONNX metadata_props (preferred: what its graph was built
    from); ``parameters``: config.pbtxt's string parameters, used when the metadata holds no
    vocabularies; ``string_inputs``: the model's BYTES inputs.
    None for a model not exported by bnmodel, without categorical columns or vocabularies, or
    whose columns are not string inputs: nothing is counted and no series shown.
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
