"""Model configuration: a frozen dataclass validated on construction, stored in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

__all__ = ["ACTIVATIONS", "BN_PLACEMENTS", "ModelConfig"]

ACTIVATIONS = ("relu", "gelu", "sigmoid", "tanh")
BN_PLACEMENTS = ("pre", "post", "none")


@dataclass(frozen=True)
class ModelConfig:
    """The model's fields, in one place: training's flags and defaults, checkpoints and export
    all read them from here. in/out features of 0 mean "from the data" (set by training)."""

    in_features: int = 0
    hidden_sizes: tuple[int, ...] = (256, 256)
    out_features: int = 0
    activation: Literal["relu", "gelu", "sigmoid", "tanh"] = "relu"
    # pre: Linear(bias=False) -> BN -> act (Ioffe & Szegedy); post: Linear -> act -> BN;
    # none: the baseline without BN.
    bn_placement: Literal["pre", "post", "none"] = "pre"
    dropout: float = 0.0
    bn_eps: float = 1e-5
    # None selects the cumulative moving average (exact population statistics after one pass).
    bn_momentum: float | None = 0.1
    # Keep the training set's feature mean/std as buffers: the exported model takes raw features.
    standardize_input: bool = True
    # Regression: the last layer emits standardized targets and a TargetScale maps them back to
    # target units (y = z * std + mean, training rows' statistics); export folds it away.
    # Training sets it for regression (TrainConfig.standardize_target); never for classifiers.
    standardize_target: bool = False
    # Categorical columns: 0 feeds each one one-hot into the first Linear (export folds it into
    # a column lookup of W); N > 0 learns an N-wide embedding per column instead.
    embedding_dim: int = 0
    # Raw table rows (set by training from the data, bnmodel/encoding.py): the model imputes
    # missing numerics (an Encode layer first), adds indicators for these numeric columns, and
    # takes one slot index per categorical column with this many slots (vocabulary + other).
    impute_missing: bool = False
    indicator_columns: tuple[int, ...] = ()
    category_sizes: tuple[int, ...] = ()

    @property
    def encodes_inputs(self) -> bool:
        """Raw rows in (an Encode layer first): imputation and/or categorical columns."""
        return self.impute_missing or bool(self.category_sizes)

    @property
    def first_width(self) -> int:
        """Inputs of the first Linear: numerics, indicators, one-hot blocks or embeddings."""
        per_column = [self.embedding_dim or size for size in self.category_sizes]
        return self.in_features + len(self.indicator_columns) + sum(per_column)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        for name in ("indicator_columns", "category_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.embedding_dim < 0:
            raise ValueError(f"--embedding-dim must be >= 0 (0: one-hot), got {self.embedding_dim}")
        if any(s < 1 for s in self.category_sizes) or any(
            not 0 <= i < self.in_features for i in self.indicator_columns
        ):
            raise ValueError(
                f"category_sizes must be >= 1 and indicator_columns in [0, in_features), got "
                f"{list(self.category_sizes)} and {list(self.indicator_columns)}"
            )
        if self.in_features < 0 or self.out_features < 0:
            raise ValueError(
                f"in_features and out_features must be >= 1 (0: from the data), got "
                f"{self.in_features} and {self.out_features}"
            )
        if not self.hidden_sizes or any(h < 1 for h in self.hidden_sizes):
            raise ValueError(
                f"--hidden must be one or more sizes >= 1, got {list(self.hidden_sizes)}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"--activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.bn_placement not in BN_PLACEMENTS:
            raise ValueError(f"--bn must be one of {BN_PLACEMENTS}, got {self.bn_placement!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not self.bn_eps > 0:
            raise ValueError(f"--bn-eps must be > 0, got {self.bn_eps}")
        if self.bn_momentum is not None and not 0.0 < self.bn_momentum <= 1.0:
            raise ValueError(f"--bn-momentum must be in (0, 1] or 'none', got {self.bn_momentum}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (lists, not tuples) for checkpoints and ONNX metadata."""
        d = asdict(self)
        for name in ("hidden_sizes", "indicator_columns", "category_sizes"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        # Checkpoints written before a field existed mean its old behaviour (off).
        return cls(**{"standardize_input": False, **d})
