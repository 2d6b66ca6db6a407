"""``bnmodel evaluate``: a model's scores on a labelled file, printed, as JSON, and as a PNG.

Classification: accuracy, macro-F1, log loss and the confusion matrix (rows: true class).
Regression: RMSE, MAE and R^2 per target, and a predicted-against-true scatter. Rows are read
by ``bnmodel.table`` (the cell and label rules training uses) and run on ONNX Runtime;
scikit-learn computes the scores, matplotlib draws the figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnmodel.predict import CHUNK_ROWS, LocalModel, PredictError, iter_chunks, load_model
from bnmodel.table import label_text
from bnmodel.unseen import UnseenText

__all__ = ["Evaluation", "evaluate_file", "label_text"]


@dataclass
class Evaluation:
    model: str
    data: str
    task: str
    rows: int
    metrics: dict[str, float]
    class_labels: list[str] | None = None
    confusion: list[list[int]] | None = None  # [true][predicted]
    plot: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # One line per categorical column with many cells in the "other" slot (bnmodel.unseen).
    warnings: list[str] = field(default_factory=list)
    blank_target_rows: int = 0  # rows not scored: their target cell was blank or missing

    def to_dict(self) -> dict[str, Any]:
        d = {
            "model": self.model,
            "data": self.data,
            "task": self.task,
            "rows": self.rows,
            "metrics": self.metrics,
            "plot": None if self.plot is None else str(self.plot),
        }
        if self.warnings:
            d["warnings"] = list(self.warnings)
        if self.blank_target_rows:
            d["blank_target_rows"] = self.blank_target_rows
        if self.confusion is not None:
            d.update(class_labels=self.class_labels, confusion_matrix=self.confusion)
        return d

    def format(self) -> str:
        lines = [f"{self.model} on {self.data}: {self.rows} rows, {self.task}"]
        if self.blank_target_rows:
            lines.append(f"  {self.blank_target_rows} rows with a blank target were not scored")
        lines += [f"  {k:<10} {v:.4f}" for k, v in self.metrics.items()]
        if self.confusion is not None and self.class_labels is not None:
            labels = self.class_labels
            width = max(8, *(len(label) + 1 for label in labels))
            lines.append("  confusion matrix (rows: true, columns: predicted)")
            lines.append("  " + " " * width + "".join(f"{label:>{width}}" for label in labels))
            for label, row in zip(labels, self.confusion, strict=True):
                lines.append("  " + f"{label:>{width}}" + "".join(f"{n:>{width}}" for n in row))
        if self.plot is not None:
            lines.append(f"plot: {self.plot}")
        return "\n".join(lines)


def _collect(
    model: LocalModel, path: Path, target: str, chunk_rows: int, unseen: UnseenText
) -> tuple[np.ndarray, np.ndarray]:
    outs, ys = [], []
    chunks = iter_chunks(
        path,
        model.feature_names,
        chunk_rows,
        target=target,
        categorical=model.categorical_columns,
        allow_missing=model.imputes,
        role="data",
        dates=model.contract.date_columns,
    )
    for x, y in chunks:
        unseen.add(x)
        outs.append(model.run(x))
        ys.append(y)
    if not outs:
        raise PredictError(f"data {path} has no data rows")
    return np.concatenate(outs), np.concatenate(ys)


def _without_blank_targets(
    out: np.ndarray, raw: np.ndarray, path: Path, target: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """(outputs, targets, rows dropped) without the rows whose target is blank or missing, as
    training drops them: a blank answer is neither a label nor a value to score against."""
    cells = raw.reshape(len(raw), -1)
    blank = np.fromiter(
        (any(label_text(v) == "" for v in row) for row in cells), dtype=bool, count=len(cells)
    )
    if blank.all():
        raise PredictError(f"data {path}: target column {target!r} is blank in every row")
    return out[~blank], raw[~blank], int(blank.sum())


def _class_indices(model: LocalModel, raw: np.ndarray, path: Path, target: str) -> np.ndarray:
    labels = model.class_labels or []
    lookup = {label: i for i, label in enumerate(labels)}
    text = np.asarray([label_text(v) for v in raw], dtype=object)
    unseen = sorted({t for t in text if t not in lookup})
    if unseen:
        listed = ", ".join(f"{u!r} ({int(np.sum(text == u))} rows)" for u in unseen[:5])
        raise PredictError(
            f"data {path}: target column {target!r} holds label(s) the model never saw in "
            f"training: {listed}; the model knows {labels[:10]}"
        )
    return np.fromiter((lookup[t] for t in text), dtype=np.int64, count=len(text))


def _classification(model: LocalModel, probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    from sklearn import metrics

    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    scores = {
        "accuracy": float(metrics.accuracy_score(y, pred)),
        "macro_f1": float(metrics.f1_score(y, pred, average="macro", labels=range(k))),
        "log_loss": float(metrics.log_loss(y, np.clip(probs, 1e-7, 1.0), labels=range(k))),
    }
    confusion = metrics.confusion_matrix(y, pred, labels=range(k))
    return {"metrics": scores, "confusion": confusion.tolist()}


def _regression(pred: np.ndarray, raw: np.ndarray, path: Path, target: str) -> dict[str, Any]:
    from sklearn import metrics

    try:
        y = np.asarray(raw, dtype=np.float64).reshape(len(raw), -1)
    except (TypeError, ValueError):
        bad = next(i for i, v in enumerate(raw) if not _is_number(v))
        raise PredictError(
            f"data {path}: target column {target!r}, row {bad + 1}: {raw[bad]!r} is not a number"
        ) from None
    scores = {
        "rmse": float(np.sqrt(metrics.mean_squared_error(y, pred))),
        "mae": float(metrics.mean_absolute_error(y, pred)),
        "r2": float(metrics.r2_score(y, pred)),
    }
    return {"metrics": scores, "y": y}


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def evaluate_file(
    model: LocalModel | str | os.PathLike[str],
    data: str | os.PathLike[str],
    *,
    target: str | None = None,
    plot: str | os.PathLike[str] | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Evaluation:
    """Score ``model`` on the labelled rows of ``data``; draw the PNG to ``plot`` if given."""
    model = model if isinstance(model, LocalModel) else load_model(model)
    path = Path(data)
    target = target or model.target_name or ("y" if path.suffix == ".npz" else "target")
    unseen = UnseenText(model.contract)
    out, raw = _collect(model, path, target, chunk_rows, unseen)
    out, raw, blank = _without_blank_targets(out, raw, path, target)
    result = Evaluation(model.source, str(path), model.task, len(out), {})
    result.blank_target_rows = blank
    result.warnings = unseen.warnings()
    if model.task == "classification":
        y = _class_indices(model, raw, path, target)
        scored = _classification(model, out, y)
        result.metrics, result.confusion = scored["metrics"], scored["confusion"]
        result.class_labels = list(model.class_labels or [])
    else:
        scored = _regression(out, raw, path, target)
        result.metrics = scored["metrics"]
    if plot is not None:
        result.plot = _draw(result, Path(plot), out, scored)
    return result


def _draw(result: Evaluation, path: Path, out: np.ndarray, scored: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = f"{Path(result.model).name} on {Path(result.data).name} ({result.rows} rows)"
    if result.confusion is not None:
        from sklearn.metrics import ConfusionMatrixDisplay

        k = len(result.class_labels or [])
        fig, ax = plt.subplots(figsize=(max(4.5, 0.6 * k + 3), max(4, 0.6 * k + 2.5)))
        ConfusionMatrixDisplay(
            np.asarray(result.confusion), display_labels=result.class_labels
        ).plot(ax=ax, colorbar=False, xticks_rotation=45 if k > 6 else "horizontal")
        ax.set_title(f"{title}\naccuracy {result.metrics['accuracy']:.4f}")
    else:
        y = scored["y"]
        fig, ax = plt.subplots(figsize=(5.5, 5))
        ax.scatter(y.ravel(), out.ravel(), s=8, alpha=0.6)
        lo, hi = float(min(y.min(), out.min())), float(max(y.max(), out.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="y = x")
        m = result.metrics
        ax.set(
            xlabel="true",
            ylabel="predicted",
            title=f"{title}\nRMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}, R² {m['r2']:.4f}",
        )
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
