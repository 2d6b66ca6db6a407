"""bnmodel/unseen.py: the share of categorical cells in the "other" slot, and its warning."""

from __future__ import annotations

import numpy as np

from bnmodel.contract import ModelContract
from bnmodel.unseen import UnseenText

CONTRACT = ModelContract(
    "classification",
    ("x",),
    ("color", "size"),
    ("a", "b"),
    vocabularies=(("red", "blue"), ("S", "M")),
)


def _inputs(colors: list[str], sizes: list[str]) -> dict[str, np.ndarray]:
    column = lambda values: np.array(values, dtype=object).reshape(-1, 1)  # noqa: E731
    return {
        "features": np.zeros((len(colors), 1), np.float32),
        "color": column(colors),
        "size": column(sizes),
    }


def test_a_high_share_of_other_names_the_column_and_its_values():
    unseen = UnseenText(CONTRACT)
    unseen.add(_inputs(["RED", "RED", "red", ""], ["S", "M", "S", "M"]))
    unseen.add(_inputs(["Blue", "blue", "blue", "blue"], ["S", "M", "XL", "S"]))
    unseen.add(_inputs(["red"] * 4, ["S"] * 4))
    assert unseen.shares() == {"color": 3 / 12, "size": 1 / 12}  # the blank is not unseen
    (line,) = unseen.warnings()
    assert line == (
        "column 'color': 25% of cells (3 of 12) hold text training never saw (or saw too "
        "rarely) and fall into the \"other\" slot: 'RED' (2), 'Blue' (1); 1 blank cells go "
        "there too; the model knows only the text training saw, exactly as written"
    )
    assert len(unseen.warnings(threshold=0.05)) == 2 and unseen.warnings(threshold=0.3) == []


def test_nothing_is_counted_without_vocabularies_or_categorical_inputs():
    unseen = UnseenText(ModelContract("classification", ("x",), ("color",), ("a", "b")))
    unseen.add({"features": np.zeros((2, 1)), "color": np.array([["z"], ["y"]], dtype=object)})
    assert not unseen.enabled and unseen.warnings() == []
    numeric = UnseenText(ModelContract("regression", ("x",)))
    numeric.add(np.zeros((3, 1), np.float32))
    assert numeric.shares() == {}
