"""scikit-learn estimators: ``BNMLPClassifier`` and ``BNMLPRegressor``.

A thin layer over the trainer the ``bnmodel train`` command runs (``bnmodel.train.train``): the
constructor's parameters are the command's flags, with their defaults read from ``TrainConfig``
and ``ModelConfig``; ``fit`` trains in memory (no run folder, no files) on a DataFrame or an
array, with string columns, blanks and missing numbers handled as the command handles a table's
columns. Predictions come from the exported graph on ONNX Runtime (the model ``export`` writes
and ``bnmodel serve`` runs), so the estimator, ``bnmodel.load`` of its export and a server give
the same numbers.

Needs the training extra (torch, scikit-learn, pandas): ``pip install 'bnmodel[train]'``.
"""

from __future__ import annotations

import numbers
import os
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import assert_all_finite, check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from bnmodel.train_config import TrainConfig

__all__ = ["PARAMETERS", "BNMLPClassifier", "BNMLPRegressor"]

# Constructor parameter -> the TrainConfig flag it sets (``TrainConfig.from_flags``). The
# defaults below are read from the same dataclasses the command-line flags are.
PARAMETERS = {
    "hidden": "hidden_sizes",
    "activation": "activation",
    "bn": "bn_placement",
    "dropout": "dropout",
    "embedding_dim": "embedding_dim",
    "bn_eps": "bn_eps",
    "bn_momentum": "bn_momentum",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "optimizer": "optimizer",
    "lr": "lr",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "schedule": "schedule",
    "warmup": "warmup",
    "grad_clip": "grad_clip",
    "patience": "patience",
    "monitor": "monitor",
    "val_fraction": "val_fraction",
    "categorical": "categorical",
    "impute": "impute",
    "missing_indicators": "missing_indicators",
    "min_category_count": "min_category_count",
    "max_categories": "max_categories",
    "device": "device",
    "precision": "precision",
    "deterministic": "deterministic",
    "random_state": "seed",
}
_D = TrainConfig()  # the command's defaults
_M = _D.model
TARGET = "target"  # the target column's name when y carries none


class _BNMLP(BaseEstimator):
    _task = ""  # "classification" or "regression"

    def __init__(
        self,
        hidden: tuple[int, ...] | int = _M.hidden_sizes,
        *,
        activation: str = _M.activation,
        bn: str = _M.bn_placement,
        dropout: float = _M.dropout,
        embedding_dim: int = _M.embedding_dim,
        bn_eps: float = _M.bn_eps,
        bn_momentum: float | None = _M.bn_momentum,
        epochs: int = _D.epochs,
        batch_size: int = _D.batch_size,
        optimizer: str = _D.optimizer,
        lr: float = _D.lr,
        momentum: float = _D.momentum,
        weight_decay: float = _D.weight_decay,
        schedule: str = _D.schedule,
        warmup: float = _D.warmup,
        grad_clip: float | None = _D.grad_clip,
        patience: int | None = _D.patience,
        monitor: str = _D.monitor,
        val_fraction: float = _D.val_fraction,
        categorical: tuple[str, ...] = _D.categorical,
        impute: str = _D.impute,
        missing_indicators: bool = _D.missing_indicators,
        min_category_count: int = _D.min_category_count,
        max_categories: int = _D.max_categories,
        device: str = _D.device,
        precision: str = _D.precision,
        deterministic: bool = _D.deterministic,
        random_state: int | np.random.RandomState | None = _D.seed,
        verbose: bool = False,
    ) -> None:
        self.hidden = hidden
        self.activation = activation
        self.bn = bn
        self.dropout = dropout
        self.embedding_dim = embedding_dim
        self.bn_eps = bn_eps
        self.bn_momentum = bn_momentum
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.schedule = schedule
        self.warmup = warmup
        self.grad_clip = grad_clip
        self.patience = patience
        self.monitor = monitor
        self.val_fraction = val_fraction
        self.categorical = categorical
        self.impute = impute
        self.missing_indicators = missing_indicators
        self.min_category_count = min_category_count
        self.max_categories = max_categories
        self.device = device
        self.precision = precision
        self.deterministic = deterministic
        self.random_state = random_state
        self.verbose = verbose

    # -- scikit-learn protocol ----------------------------------------------------------------

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # a missing number is imputed, as by bnmodel train
        return tags

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_predictor", None)  # an ONNX Runtime session; rebuilt from _onnx
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "_onnx" in state:
            self._predictor = _predictor(self._onnx, type(self).__name__)

    # -- fit -----------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any) -> _BNMLP:
        """Train on rows ``X`` (DataFrame, pyarrow Table or array) and targets ``y``.

        Holds out ``val_fraction`` of the rows (stratified for a classifier) to pick the best
        epoch, as ``bnmodel train`` does; the fitted model is that epoch's.
        """
        from bnmodel.data import dataset_from_frame
        from bnmodel.export.api import export_checkpoint
        from bnmodel.train import train

        frame = self._frame(X, reset=True)
        targets = self._targets(y, len(frame))
        target = _free_name(TARGET if getattr(y, "name", None) is None else str(y.name), frame)
        names = (
            [target] if targets.ndim == 1 else [f"{target}_{i}" for i in range(targets.shape[1])]
        )
        frame[names] = targets if targets.ndim == 2 else targets[:, None]
        dataset = dataset_from_frame(
            frame,
            target=",".join(names),
            task=self._task,
            classes=self._labels(),
            categorical=tuple(self.categorical),
        )
        config = self._config(dataset, ",".join(names))
        result = train(config, progress=bool(self.verbose), log=print if self.verbose else None)
        if result.best is None:
            raise RuntimeError(f"{type(self).__name__}: training stopped before its first epoch")
        self.checkpoint_ = result.best
        self.history_ = result.history
        self.best_epoch_ = result.best_epoch
        self.n_iter_ = result.epochs_run
        # Predictions run the exported graph, as bnmodel.load and bnmodel serve do.
        self._onnx = export_checkpoint(self.checkpoint_, verify=False).model.SerializeToString()
        self._predictor = _predictor(self._onnx, type(self).__name__)
        return self

    def _config(self, data: Any, target: str) -> TrainConfig:
        flags = {flag: getattr(self, name) for name, flag in PARAMETERS.items()}
        hidden = (self.hidden,) if isinstance(self.hidden, numbers.Integral) else self.hidden
        if isinstance(hidden, str):  # tuple("64") would be two layers of 6 and 4
            raise ValueError(
                f"{type(self).__name__}: hidden must be sizes such as (64, 64), got {hidden!r}"
            )
        flags.update(
            hidden_sizes=tuple(hidden),
            seed=_seed(self.random_state),
            data=data,
            target=target,
            task=self._task,
            out_dir=None,
        )
        try:
            return TrainConfig.from_flags(flags)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{type(self).__name__}: {exc}") from None

    def _frame(self, X: Any, *, reset: bool) -> pd.DataFrame:
        """X as a DataFrame of the training columns, checked as scikit-learn checks inputs."""
        if type(X).__module__.startswith("pyarrow"):
            X = X.to_pandas()
        if isinstance(X, pd.DataFrame):
            validate_data(self, X, reset=reset, skip_check_array=True)
            if len(X) < (2 if reset else 1):
                raise ValueError(f"Found {len(X)} sample(s); {type(self).__name__} needs >= 2")
            frame = X.set_axis([str(c) for c in X.columns], axis=1)
        else:
            array = validate_data(
                self,
                X,
                reset=reset,
                dtype=None,
                ensure_all_finite="allow-nan",
                ensure_min_samples=2 if reset else 1,
            )
            frame = pd.DataFrame(array)
        if reset:
            self._columns = [str(c) for c in frame.columns]
            if not hasattr(self, "feature_names_in_"):  # an array: columns x0, x1, ...
                self._columns = [f"x{i}" for i in range(frame.shape[1])]
        frame = frame.set_axis(self._columns, axis=1)
        _check_cells(frame)
        return frame

    # -- predict -------------------------------------------------------------------------------

    def _outputs(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self._predictor.outputs(self._frame(X, reset=False)).astype(np.float64)

    def export(
        self,
        output: str | os.PathLike[str] | None = None,
        *,
        repository: str | os.PathLike[str] | None = None,
        name: str = "model",
        version: int = 1,
        X: Any = None,
        **options: Any,
    ) -> Any:
        """Fold, verify and write the model as ``bnmodel export`` does: an ONNX file at
        ``output`` and/or ``repository``/``name``/``version`` for ``bnmodel serve``.

        The equivalence report compares the folded graph with the trained model on random rows,
        and on the rows of ``X`` when given (held-out rows; the training table is not kept).
        ``options`` go to ``bnmodel.export.api.export_checkpoint`` (fp16, int8, opset, ...).
        Returns its ExportResult (``print(result)`` shows the report); raises on a mismatch,
        writing nothing.
        """
        from bnmodel.export.api import export_checkpoint

        check_is_fitted(self)
        if output is None and repository is None:
            raise ValueError(
                "say where to write: export('model.onnx') and/or export(repository=DIR)"
            )
        rows = None
        if X is not None:
            from bnmodel.export.verify import Rows
            from bnmodel.predict import table_columns

            ckpt = self.checkpoint_
            dates = (ckpt.preprocessing or {}).get("dates", ())
            numeric, categories, seconds = table_columns(
                self._frame(X, reset=False),
                ckpt.feature_names,
                ckpt.categorical_columns,
                allow_missing=ckpt.preprocessing is not None,
                dates=dates,
            )
            rows = numeric if ckpt.preprocessing is None else Rows(numeric, categories, seconds)
        return export_checkpoint(
            self.checkpoint_,
            output=output,
            repository=repository,
            name=name,
            version=version,
            validation_rows=rows,
            **options,
        )

    def _labels(self) -> list[str] | None:
        return None

    def _targets(self, y: Any, rows: int) -> np.ndarray:
        raise NotImplementedError


class BNMLPClassifier(ClassifierMixin, _BNMLP):
    """A batch-normalized MLP classifier; ``classes_`` are y's distinct values, sorted."""

    _task = "classification"

    def _targets(self, y: Any, rows: int) -> np.ndarray:
        y = _check_y(self, y, rows, numeric=False)
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__}: y holds one class ({self.classes_[0]!r}); "
                "classification needs at least 2 classes"
            )
        return y

    def _labels(self) -> list[str]:
        from bnmodel.data import sorted_labels

        return sorted_labels(self.classes_)  # the model's output i is classes_[i]

    def predict(self, X: Any) -> np.ndarray:
        probabilities = self._outputs(X)  # checks fitted first
        return self.classes_[probabilities.argmax(axis=1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """(N, len(classes_)) class probabilities, columns in the order of ``classes_``."""
        return self._outputs(X)


class BNMLPRegressor(RegressorMixin, _BNMLP):
    """A batch-normalized MLP regressor; y may hold several targets (N, T)."""

    _task = "regression"

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _targets(self, y: Any, rows: int) -> np.ndarray:
        y = _check_y(self, y, rows, numeric=True)
        self._one_target = y.ndim == 1
        return y

    def predict(self, X: Any) -> np.ndarray:
        out = self._outputs(X)
        return out[:, 0] if self._one_target else out


# --------------------------------------------------------------------------------------------
# Helpers


def _predictor(model_bytes: bytes, owner: str) -> Any:
    from bnmodel.predict import load_model_bytes

    return load_model_bytes(model_bytes, f"{owner} (in memory)")


def _seed(random_state: Any) -> int:
    """An int is the seed itself (random_state=0 is bnmodel train --seed 0); None or a
    RandomState draws one, as scikit-learn estimators do."""
    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def _check_y(estimator: BaseEstimator, y: Any, rows: int, numeric: bool) -> np.ndarray:
    if y is None:
        raise ValueError(
            f"{type(estimator).__name__} requires y to be passed, but the target y is None"
        )
    y = np.asarray(y) if not isinstance(y, (pd.Series, pd.DataFrame)) else y.to_numpy()
    if y.ndim == 2 and y.shape[1] == 1 and numeric:
        y = y[:, 0]
    if y.dtype.kind in "fc" or numeric:
        if numeric:
            y = y.astype(np.float64)
        assert_all_finite(y, input_name="y")
    if len(y) != rows:
        raise ValueError(f"X has {rows} rows but y has {len(y)}; give one target per row")
    return y


def _free_name(name: str, frame: pd.DataFrame) -> str:
    """``name`` or, if X has such a column, ``name_`` (and so on): the target's column."""
    while name in frame.columns:
        name += "_"
    return name


_CELL_TYPES = (str, bytes, numbers.Number, bool, np.bool_, type(None))


def _check_cells(frame: pd.DataFrame) -> None:
    """Every cell of an object column is text, a number, a bool or missing."""
    for name in frame.columns:
        column = frame[name]
        if column.dtype != object:
            continue
        kind = pd.api.types.infer_dtype(column, skipna=True)
        if kind not in ("mixed", "mixed-integer"):
            continue
        for row, value in enumerate(column):
            if not isinstance(value, _CELL_TYPES):
                raise TypeError(
                    f"column {name!r}, row {row + 1}: {value!r} is a {type(value).__name__}; "
                    "a cell's argument must be a string or a number (or a bool, or missing)"
                )
