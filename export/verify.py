"""Equivalence report: folded and unfolded, PyTorch and ONNX Runtime, against one float64 reference.

The reference is the unfolded model evaluated in float64. Each candidate (PyTorch unfolded and
folded in float32; ONNX Runtime folded and unfolded with graph optimizations off and on) runs
on the same rows at batch sizes 1, 2, 7 and 1024, on validation rows and on random rows.

Error measure: ``max |candidate - reference| / max |reference|`` per output, i.e. relative to
the output's scale, which is what a consumer of logits/probabilities/predictions sees.
Tolerances (why):
- float32, 1e-5: folding in float64 leaves only float32 rounding in the Gemms, a few ulps
  (1.2e-7 each) of accumulated error per layer, so ~1e-6 at worst for realistic depths; 1e-5
  leaves headroom while any real folding error (a wrong eps, a missed mean) is far larger.
- float16, 1e-2: fp16 keeps 11 significant bits (ulp 9.8e-4 relative); weights, inputs and
  every intermediate are rounded, so a few ulps per layer add up to a few 1e-3.
A classifier must also pick the same class wherever the reference's top-two margin exceeds
twice the absolute tolerance; closer calls may flip under rounding and are only counted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "BATCH_SIZES",
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "Comparison",
    "EquivalenceReport",
    "ExportMismatchError",
    "Rows",
    "random_rows",
    "verify_equivalence",
]

FP32_TOLERANCE = 1e-5
FP16_TOLERANCE = 1e-2
BATCH_SIZES = (1, 2, 7, 1024)
Outputs = dict[str, np.ndarray]  # output name -> (batch, width)
ROW_SOURCES = ["validation", "random", "blanks and unseen"]
UNSEEN = "\x00never seen in training"  # a categorical value no vocabulary holds


@dataclass(frozen=True)
class Rows:
    """Raw rows: numerics (N, F) float32 with NaN for missing, categorical text (N, C) or None,
    date columns as seconds since 1970 (N, D) float64 or None."""

    numeric: np.ndarray
    categories: np.ndarray | None = None
    dates: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.numeric)

    def head(self, n: int) -> Rows:
        return self.take(slice(0, n))

    def take(self, index: np.ndarray | slice) -> Rows:
        cats = None if self.categories is None else self.categories[index]
        dates = None if self.dates is None else self.dates[index]
        return Rows(self.numeric[index], cats, dates)

    def resized(self, n: int) -> Rows:
        """n rows, the given ones repeated as needed."""
        return self.take(np.resize(np.arange(len(self)), n))

    def feed(
        self, categorical: Sequence[str], numeric: bool = True, dates: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """The graph's inputs: "features" (when ``numeric``), one (N, 1) text per categorical
        column and one (N, 1) float64 of seconds per date column."""
        from .onnx_export import INPUT_NAME

        feed = {INPUT_NAME: self.numeric} if numeric else {}
        for i, column in enumerate(categorical):
            feed[column] = self.categories[:, i : i + 1].astype(object)
        for i, column in enumerate(dates):
            feed[column] = self.dates[:, i : i + 1].astype(np.float64)
        return feed


@dataclass(frozen=True)
class Comparison:
    candidate: str  # e.g. "ONNX Runtime folded, graph opt on"
    precision: str  # "fp32" | "fp16"
    rows: str  # "validation" | "random"
    output: str
    max_abs: float
    max_rel: float  # max_abs / max |reference| of this output on these rows
    tolerance: float
    worst_batch: int  # batch size of the run holding the worst element
    worst_row: int  # row index within that batch (= within the rows: batches are prefixes)
    reference: float
    value: float
    argmax_agreement: float | None = None  # logits only: share of rows with the same class
    decisive_flips: int = 0  # class changes where the reference margin was clear

    @property
    def ok(self) -> bool:
        return bool(self.max_rel <= self.tolerance) and self.decisive_flips == 0

    def describe(self) -> str:
        flips = f", {self.decisive_flips} decisive argmax flips" if self.decisive_flips else ""
        return (
            f"output {self.output!r} ({self.candidate}, {self.precision}, {self.rows} rows): "
            f"worst at row {self.worst_row} of batch {self.worst_batch}: reference "
            f"{self.reference:.9g}, got {self.value:.9g}; relative error {self.max_rel:.3g} > "
            f"tolerance {self.tolerance:g}{flips}"
        )


class ExportMismatchError(ValueError):
    """A candidate's outputs differ from the reference beyond tolerance; ``.report`` has all."""

    def __init__(self, report: EquivalenceReport) -> None:
        self.report = report
        failures = report.failures
        more = f" (and {len(failures) - 1} more comparisons)" if len(failures) > 1 else ""
        super().__init__(f"folded and unfolded models disagree: {failures[0].describe()}{more}")


@dataclass
class EquivalenceReport:
    comparisons: list[Comparison]
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    @property
    def failures(self) -> list[Comparison]:
        return sorted((c for c in self.comparisons if not c.ok), key=lambda c: -c.max_rel)

    def raise_for_mismatch(self) -> None:
        if not self.ok:
            raise ExportMismatchError(self)

    def groups(self) -> list[tuple[str, str, list[Comparison]]]:
        """(candidate, precision, its comparisons) in run order: one summary line each."""
        grouped: dict[tuple[str, str], list[Comparison]] = {}
        for c in self.comparisons:
            grouped.setdefault((c.candidate, c.precision), []).append(c)
        return [(name, precision, group) for (name, precision), group in grouped.items()]

    def format(self, verbose: bool = False) -> str:
        """One line per candidate: worst relative error vs tolerance, argmax agreement, verdict."""
        rows = sorted({c.rows for c in self.comparisons}, key=ROW_SOURCES.index)
        rows = [", ".join(rows[:-1]), rows[-1]] if len(rows) > 2 else rows
        lines = [
            f"equivalence against the unfolded model in float64 ({' and '.join(rows)} rows, "
            f"batch sizes {', '.join(map(str, self.batch_sizes))}):"
        ]
        for name, precision, group in self.groups():
            worst = max(group, key=lambda c: c.max_rel)
            agreements = [c.argmax_agreement for c in group if c.argmax_agreement is not None]
            agree = f"  argmax agreement {100 * min(agreements):.2f}%" if agreements else ""
            verdict = "pass" if all(c.ok for c in group) else "FAIL"
            lines.append(
                f"  {name + ' ' + precision:<42} worst relative error {worst.max_rel:.1e} "
                f"(tolerance {worst.tolerance:g}){agree}  {verdict}"
            )
        if verbose:
            lines += self._table()
        lines += [f"note: {n}" for n in self.notes]
        lines.append(
            "result: "
            + (
                "equivalent within tolerance"
                if self.ok
                else "MISMATCH: " + self.failures[0].describe()
            )
        )
        return "\n".join(lines)

    def _table(self) -> list[str]:
        header = (
            f"{'candidate':<38}{'prec':<6}{'rows':<12}{'output':<15}{'rel error':>11}"
            f"{'tolerance':>11}{'argmax':>9}  {'worst at':<20}ok"
        )
        lines = ["", header, "-" * len(header)]
        for c in self.comparisons:
            agree = "" if c.argmax_agreement is None else f"{100 * c.argmax_agreement:.2f}%"
            where = f"row {c.worst_row}, batch {c.worst_batch}"
            lines.append(
                f"{c.candidate:<38}{c.precision:<6}{c.rows:<12}{c.output:<15}"
                f"{c.max_rel:>11.3g}{c.tolerance:>11g}{agree:>9}  {where:<20}"
                f"{'yes' if c.ok else 'NO'}"
            )
        return [*lines, ""]

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "reference": "unfolded model in float64",
            "error": "max |candidate - reference| / max |reference| per output",
            "batch_sizes": list(self.batch_sizes),
            "summary": [
                {
                    "candidate": name,
                    "precision": precision,
                    "worst_relative_error": max(c.max_rel for c in group),
                    "tolerance": group[0].tolerance,
                    "ok": all(c.ok for c in group),
                }
                for name, precision, group in self.groups()
            ],
            "comparisons": [{**asdict(c), "ok": c.ok} for c in self.comparisons],
            "notes": list(self.notes),
        }

    __str__ = format


def _named(out: np.ndarray, task: str) -> Outputs:
    """Contract outputs from the last layer's (batch, width) output; softmax in out's dtype."""
    if task != "classification":
        return {"predictions": out}
    shifted = np.exp(out - out.max(axis=1, keepdims=True))
    return {"logits": out, "probabilities": shifted / shifted.sum(axis=1, keepdims=True)}


def _torch_runner(
    model: nn.Module, task: str, dtype: torch.dtype, preprocessing: Any = None
) -> Callable[[Rows], Outputs]:
    """Torch takes the model's raw input: numerics, then slot indices from the vocabularies."""
    model = copy.deepcopy(model).to(dtype).eval()

    def run(rows: Rows) -> Outputs:
        x = rows.numeric
        if preprocessing is not None:
            x = preprocessing.model_input(rows.numeric, rows.categories, rows.dates)
        with torch.no_grad():
            out = model(torch.from_numpy(np.asarray(x, np.float64)).to(dtype))
        return _named(out.numpy(), task)

    return run


def _ort_runner(
    model_bytes: bytes,
    optimize: bool,
    fp16: bool,
    categorical: Sequence[str] = (),
    dates: Sequence[str] = (),
) -> Callable[[Rows], Outputs]:
    """ONNX Runtime takes the contract's inputs: "features", one string tensor per categorical
    column and one float64 tensor of seconds per date column."""
    import onnxruntime as ort

    from .onnx_export import INPUT_NAME

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the verify table is the output
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    takes_numeric = INPUT_NAME in {i.name for i in session.get_inputs()}
    dtype = np.float16 if fp16 else np.float32

    def run(rows: Rows) -> Outputs:
        typed = Rows(rows.numeric.astype(dtype), rows.categories, rows.dates)
        outputs = session.run(None, typed.feed(categorical, takes_numeric, dates))
        return dict(zip(names, outputs, strict=True))

    return run


def _compare(
    candidate: tuple[str, str, Callable[[Rows], Outputs]],
    rows_name: str,
    rows: Rows,
    reference: Outputs,
    batch_sizes: Sequence[int],
) -> list[Comparison]:
    """One Comparison per output; batch b runs rows[:b], so row indices match the reference."""
    name, precision, run = candidate
    tolerance = FP16_TOLERANCE if precision == "fp16" else FP32_TOLERANCE
    results = {b: run(rows.head(b)) for b in batch_sizes}
    comparisons = []
    for output, ref in reference.items():
        scale = max(float(np.abs(ref).max()), np.finfo(np.float64).tiny)
        worst = (-1.0, 0, 0, 0.0, 0.0)  # (abs error, batch, row, reference, value)
        for b, outs in results.items():
            got = np.asarray(outs[output], np.float64)
            err = np.where(np.isfinite(got), np.abs(got - ref[:b]), np.inf)
            row, col = np.unravel_index(int(np.argmax(err)), err.shape)
            if err[row, col] > worst[0]:
                worst = (
                    float(err[row, col]),
                    b,
                    int(row),
                    float(ref[row, col]),
                    float(got[row, col]),
                )
        agreement, flips = _argmax_check(output, results, ref, 2 * tolerance * scale)
        comparisons.append(
            Comparison(
                name,
                precision,
                rows_name,
                output,
                worst[0],
                worst[0] / scale,
                tolerance,
                *worst[1:],
                agreement,
                flips,
            )
        )
    return comparisons


def _argmax_check(
    output: str, results: Mapping[int, Outputs], ref: np.ndarray, margin: float
) -> tuple[float | None, int]:
    """(share of rows with the reference's class, class changes where its margin > margin)."""
    if output != "logits":
        return None, 0
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
    clear = top2[:, 1] - top2[:, 0] > margin
    same, total, flips = 0, 0, 0
    for b, outs in results.items():
        agree = np.argmax(outs[output], axis=1) == np.argmax(ref[:b], axis=1)
        same, total = same + int(agree.sum()), total + b
        flips += int((~agree & clear[:b]).sum())
    return same / total, flips


def random_rows(model: nn.Module, n: int, in_features: int, seed: int = 0) -> np.ndarray:
    """(n, in_features) float32 standard-normal rows, in raw units when the model standardizes.

    With a Standardize layer first, rows are mean + std * z: N(0, 1) in the space the network
    was trained in, instead of far outside it when features have large means.
    """
    z = np.random.default_rng(seed).standard_normal((n, in_features))
    layers = list(getattr(model, "net", []))
    first = layers[1] if len(layers) > 1 and type(layers[0]).__name__ == "Encode" else None
    first = first if first is not None else next(iter(layers), None)
    mean, std = getattr(first, "mean", None), getattr(first, "std", None)
    if torch.is_tensor(mean) and torch.is_tensor(std):  # raw-row models: the numeric columns
        z = mean[:in_features].double().numpy() + std[:in_features].double().numpy() * z
    return z.astype(np.float32)


def _random_categories(preprocessing: Any, n: int, seed: int) -> np.ndarray | None:
    """(n, C) values drawn from each vocabulary."""
    if preprocessing is None or not preprocessing.categorical:
        return None
    rng = np.random.default_rng(seed + 1)
    columns = [
        np.asarray(v, dtype=object)[rng.integers(0, len(v), n)] for v in preprocessing.vocabularies
    ]
    return np.stack(columns, axis=1)


def _random_dates(preprocessing: Any, n: int, seed: int) -> np.ndarray | None:
    """(n, D) seconds: any time of the three years from each date column's origin."""
    if preprocessing is None or not preprocessing.dates:
        return None
    rng = np.random.default_rng(seed + 3)
    origins = np.asarray(preprocessing.date_origins, np.float64)
    days = origins + rng.uniform(0.0, 3 * 365.0, (n, len(origins)))
    return np.round(days * 86400.0, 3)  # milliseconds, as clients send them


def blanks_and_unseen(rows: Rows, seed: int = 0) -> Rows:
    """The rows with about a quarter of the numeric and date cells missing (NaN) and of the
    categorical cells blank ("") or a value no vocabulary holds: what the encoders must get
    right."""
    rng = np.random.default_rng(seed + 2)
    numeric = rows.numeric.copy()
    numeric[rng.random(numeric.shape) < 0.25] = np.nan
    cats = dates = None
    if rows.categories is not None:
        cats = rows.categories.copy()
        draw = rng.random(cats.shape)
        cats[draw < 0.125] = ""
        cats[(draw >= 0.125) & (draw < 0.25)] = UNSEEN
    if rows.dates is not None:
        dates = rows.dates.copy()
        dates[rng.random(dates.shape) < 0.25] = np.nan
    return Rows(numeric, cats, dates)


def _row_sources(
    model: nn.Module,
    validation_rows: np.ndarray | Rows | None,
    in_features: int,
    n: int,
    seed: int,
    preprocessing: Any = None,
) -> dict[str, Rows]:
    sources = {}
    if validation_rows is not None:
        rows = validation_rows if isinstance(validation_rows, Rows) else Rows(validation_rows)
        numeric = np.asarray(rows.numeric, np.float32)
        if numeric.ndim != 2 or numeric.shape[1] != in_features or len(numeric) == 0:
            raise ValueError(
                f"validation rows: expected shape (N >= 1, {in_features}), got {numeric.shape}"
            )
        # repeats if N < n
        sources["validation"] = Rows(numeric, rows.categories, rows.dates).resized(n)
    random = Rows(
        random_rows(model, n, in_features, seed),
        _random_categories(preprocessing, n, seed),
        _random_dates(preprocessing, n, seed),
    )
    sources["random"] = random
    if preprocessing is not None:
        sources["blanks and unseen"] = blanks_and_unseen(sources.get("validation", random), seed)
    return sources


def verify_equivalence(
    unfolded: nn.Module,
    folded: nn.Module,
    onnx_folded: bytes,
    onnx_unfolded: bytes,
    *,
    task: str,
    in_features: int,
    validation_rows: np.ndarray | Rows | None = None,
    fp16: bool = False,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    seed: int = 0,
    notes: Sequence[str] = (),
    preprocessing: Any = None,
) -> EquivalenceReport:
    """Run every candidate on the same rows and compare each output with the float64 reference.

    Raw-row models (``preprocessing``, an ``encoding.Preprocessing``): torch gets the slot
    indices the vocabularies give, ONNX Runtime the strings themselves; a third row source
    has blanks and never-seen categories.
    """
    precision = "fp16" if fp16 else "fp32"
    prep = preprocessing
    candidates = [
        ("PyTorch unfolded", "fp32", _torch_runner(unfolded, task, torch.float32, prep)),
        ("PyTorch folded", "fp32", _torch_runner(folded, task, torch.float32, prep)),
    ]
    categorical = () if prep is None else prep.categorical
    dates = () if prep is None else prep.dates
    for label, model_bytes in (("folded", onnx_folded), ("unfolded", onnx_unfolded)):
        for optimize in (False, True):
            run = _ort_runner(model_bytes, optimize, fp16, categorical, dates)
            switch = "on" if optimize else "off"
            candidates.append((f"ONNX Runtime {label}, graph opt {switch}", precision, run))
    reference_run = _torch_runner(unfolded, task, torch.float64, prep)
    comparisons = []
    for rows_name, rows in _row_sources(
        unfolded, validation_rows, in_features, max(batch_sizes), seed, prep
    ).items():
        if fp16:  # every candidate sees the rows the fp16 graph sees
            numeric = rows.numeric.astype(np.float16).astype(np.float32)
            rows = Rows(numeric, rows.categories, rows.dates)
        reference = reference_run(rows)
        for candidate in candidates:
            comparisons += _compare(candidate, rows_name, rows, reference, batch_sizes)
    if prep is not None:
        notes = [
            *notes,
            "blanks and unseen rows: the validation (else random) rows with ~25% of numeric "
            "cells missing (NaN) and ~25% of categorical cells blank or never seen in training",
        ]
    return EquivalenceReport(comparisons, tuple(batch_sizes), list(notes))
