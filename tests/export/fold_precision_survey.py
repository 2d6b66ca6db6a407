"""By hand: how often folding breaks the precision bound over random adversarial models.

    python tests/export/fold_precision_survey.py [N] [SEED] [MAX_FOLDED_SHIFT]

Draws N models as the property test does (export_testlib.adversarial_model), prints each
draw that breaks the bound, then the folded/unfolded error ratio's quantiles and the count.
MAX_FOLDED_SHIFT "inf" never keeps a centering Sub (every shift folded).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bnmodel.export import fold  # noqa: E402
from export_testlib import UNIT_STATES, adversarial_model  # noqa: E402
from test_export_fold_properties import bound_holds, errors  # noqa: E402

from bnmodel.config import ACTIVATIONS  # noqa: E402


def draw(r: random.Random) -> dict:
    return dict(
        in_features=r.randint(1, 8),
        hidden_sizes=tuple(r.randint(1, 16) for _ in range(r.randint(1, 3))),
        out_features=r.randint(1, 4),
        activation=r.choice(ACTIVATIONS),
        bn_placement=r.choice(["pre", "post"]),
        standardize_input=r.random() < 0.5,
        bn_eps=r.choice([1e-5, 1e-3]),
        cumulative=r.random() < 0.5,
        affine=r.random() < 0.5,
        states=[r.choice(UNIT_STATES) for _ in range(r.randint(1, 3))],
        mean_scale=r.choice([1.0, 1e3]),
        log10_min_var=r.choice([None, -8.0, -4.0, 0.0]),
        seed=r.randint(0, 2**16),
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    r = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    if len(sys.argv) > 3:
        fold.MAX_FOLDED_SHIFT = float(sys.argv[3])
    ratios, broken = [], 0
    for i in range(n):
        choice = draw(r)
        found = errors(*adversarial_model(**choice))
        worst = max(found["PyTorch folded"], found["ONNX Runtime folded"])
        ratios.append(worst / max(found["unfolded"], 1e-30))
        if not bound_holds(worst, found["unfolded"]):
            broken += 1
            print(i, {k: f"{v:.2e}" for k, v in found.items()}, choice)
    q = np.quantile(ratios, [0.5, 0.9, 0.99, 1.0])
    print(
        f"MAX_FOLDED_SHIFT {fold.MAX_FOLDED_SHIFT}: folded/unfolded ratio median {q[0]:.2f}, "
        f"90% {q[1]:.2f}, 99% {q[2]:.2f}, max {q[3]:.2f}; bound broken {broken} of {n}"
    )


if __name__ == "__main__":
    main()
