"""Unseen text: the share of each categorical column's cells that fall into the "other" slot.

A value training never saw (or saw fewer than --min-category-count times) and a blank cell
share the "other" slot, so a test file whose text differs from training's ("TRUE" where
training had "True", "Grün" for "grün") loses accuracy without an error. predict, evaluate and
``bnmodel infer`` count those cells with ``UnseenText`` and warn when a column's share is high,
naming the column and its most frequent unseen values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from bnmodel.contract import ModelContract

__all__ = ["UNSEEN_SHARE", "UnseenText"]

UNSEEN_SHARE = 0.10  # warn when more than this share of a column's cells is unseen text
SHOWN_VALUES = 5
TRACKED_VALUES = 1000  # distinct unseen values counted per column (an ID column has millions)


@dataclass
class UnseenText:
    """Counts, over chunks of model inputs, the categorical cells outside each vocabulary."""

    contract: ModelContract
    rows: int = 0
    other: list[int] = field(default_factory=list)  # per column: cells in the "other" slot
    blank: list[int] = field(default_factory=list)  # per column: of which blank ("")
    values: list[Counter[str]] = field(default_factory=list)  # per column: unseen text

    def __post_init__(self) -> None:
        columns = len(self.contract.categorical_columns)
        self._known = [frozenset(v) for v in self.contract.vocabularies or ()]
        self.other, self.blank = [0] * columns, [0] * columns
        self.values = [Counter() for _ in range(columns)]

    @property
    def enabled(self) -> bool:
        """The contract records vocabularies (a model exported by bnmodel with categoricals)."""
        return bool(self._known)

    def add(self, inputs: dict[str, np.ndarray] | np.ndarray) -> None:
        """One chunk's model inputs (``Chunk.inputs``): each categorical column [n, 1]."""
        if not self.enabled or not isinstance(inputs, dict):
            return
        names = self.contract.categorical_columns
        self.rows += len(inputs[names[0]])
        for i, (name, known) in enumerate(zip(names, self._known, strict=True)):
            column = inputs[name].reshape(-1)
            outside = np.fromiter((v not in known for v in column), bool, count=len(column))
            if not outside.any():
                continue
            cells = column[outside]
            self.other[i] += len(cells)
            self.blank[i] += int(np.count_nonzero(cells == ""))
            counts = self.values[i]
            for value in cells[cells != ""]:
                if value in counts or len(counts) < TRACKED_VALUES:
                    counts[value] += 1

    def shares(self) -> dict[str, float]:
        """Per categorical column, the share of cells holding text outside its vocabulary
        (blank cells, missing values, go to the "other" slot too but are not counted)."""
        if not self.rows:
            return {}
        names = self.contract.categorical_columns
        unseen = [o - b for o, b in zip(self.other, self.blank, strict=True)]
        return {c: n / self.rows for c, n in zip(names, unseen, strict=True)}

    def warnings(self, threshold: float = UNSEEN_SHARE) -> list[str]:
        """One line per column whose unseen share exceeds ``threshold``."""
        lines = []
        for i, (column, share) in enumerate(self.shares().items()):
            if share <= threshold:
                continue
            top = self.values[i].most_common(SHOWN_VALUES)
            shown = ", ".join(f"{v!r} ({n})" for v, n in top)
            more = len(self.values[i]) - len(top)
            blank = f"; {self.blank[i]} blank cells go there too" if self.blank[i] else ""
            lines.append(
                f"column {column!r}: {100 * share:.0f}% of cells "
                f"({self.other[i] - self.blank[i]} of {self.rows}) hold text training never "
                f'saw (or saw too rarely) and fall into the "other" slot: {shown}'
                f"{f' and {more} more' if more > 0 else ''}{blank}; the model knows only the "
                "text training saw, exactly as written"
            )
        return lines
