"""INT8: static QDQ quantization of the folded graph with ONNX Runtime's own tools, and its check.

Why it works here: folding leaves Gemm -> activation chains with per-output-channel weights
and no separate normalization, which is what per-channel weight quantization wants. ORT
turns each QuantizeLinear -> DequantizeLinear -> Gemm into one integer QGemm (U8S8: VNNI/AMX
on x86). Kept in float: the input standardization (folding 1/std into the first Linear's
input columns would spread them over orders of magnitude, and per-channel quantization has
one scale per output row), centering Subs, Softmax, and the first contract output (logits or
predictions come straight out of the last QGemm as float, not rounded to 256 levels).

The graph keeps the contract (float32 "features" in, float32 outputs), so the server serves
it unchanged. The check runs fp32 and int8 on labeled validation rows and refuses the export
when accuracy drops (or RMSE rises) by more than the caller allows.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

__all__ = [
    "CALIBRATION_ROWS",
    "DEFAULT_MAX_ACCURACY_DROP",
    "DEFAULT_MAX_RMSE_INCREASE",
    "Int8AccuracyError",
    "Int8Error",
    "Int8Report",
    "compare_int8",
    "first_gemm",
    "quantize_int8",
    "read_feature_rows",
]

DEFAULT_MAX_ACCURACY_DROP = 0.5  # accuracy points (percent of rows)
DEFAULT_MAX_RMSE_INCREASE = 1.0  # percent of the fp32 RMSE
# MinMax calibration needs the range of each activation, not many rows: 2048 training rows
# take ~1 s; more only widen ranges towards outliers.
CALIBRATION_ROWS = 2048
_FLOAT_OPS = ("Softmax", "Sub", "Div")  # kept in float (see the module docstring)


class Int8Error(ValueError):
    """INT8 export cannot run as asked (no calibration rows, unreadable calibration file)."""


@dataclass(frozen=True)
class Int8Report:
    task: str
    rows: int  # validation rows compared
    labeled: bool  # False: no labels; the drop is 100 - agreement, an upper bound
    fp32_metric: float  # accuracy in % (classification) or RMSE (regression)
    int8_metric: float
    argmax_agreement: float | None  # % of rows with the same class
    max_probability_difference: float | None
    max_prediction_difference: float | None  # regression: max |int8 - fp32|
    allowed: float  # max accuracy drop (points) or RMSE increase (% of fp32 RMSE)
    notes: list[str] = field(default_factory=list)

    @property
    def drop(self) -> float:
        """Accuracy points lost, or the RMSE increase in % of the fp32 RMSE (bigger is worse)."""
        if self.task == "classification":
            return self.fp32_metric - self.int8_metric
        return 100.0 * (self.int8_metric - self.fp32_metric) / max(self.fp32_metric, 1e-30)

    @property
    def ok(self) -> bool:
        return bool(self.drop <= self.allowed)

    def format(self, verbose: bool = False) -> str:  # one line either way
        verdict = "pass" if self.ok else "FAIL"
        if self.task == "classification":
            source = "labeled" if self.labeled else "unlabeled (drop = disagreement, upper bound)"
            return (
                f"int8 vs fp32 on {self.rows} {source} validation rows: accuracy "
                f"{self.fp32_metric:.2f}% -> {self.int8_metric:.2f}% (drop {self.drop:.2f} "
                f"points, allowed {self.allowed:g}), argmax agreement "
                f"{self.argmax_agreement:.2f}%, max probability difference "
                f"{self.max_probability_difference:.3g}  {verdict}"
            )
        return (
            f"int8 vs fp32 on {self.rows} validation rows: RMSE {self.fp32_metric:.6g} -> "
            f"{self.int8_metric:.6g} ({self.drop:+.2f}%, allowed {self.allowed:g}%), max "
            f"prediction difference {self.max_prediction_difference:.3g}  {verdict}"
        )

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "drop": self.drop, "ok": self.ok}


class Int8AccuracyError(ValueError):
    """The INT8 graph loses more than allowed; ``.report`` has the figures."""

    def __init__(self, report: Int8Report) -> None:
        self.report = report
        what = "accuracy drop" if report.task == "classification" else "RMSE increase"
        flag = "--max-accuracy-drop" if report.task == "classification" else "--max-rmse-increase"
        super().__init__(
            f"int8 {what} {report.drop:.2f} exceeds {flag} {report.allowed:g}; nothing "
            f"written: export fp32 instead (drop --int8), or allow more with {flag}"
        )


def read_feature_rows(path: str | Path, feature_names: Sequence[str]) -> np.ndarray:
    """(N, F) float32 rows of a table (columns named as the model's features; others are
    ignored) or NPZ (array ``X`` or ``features``) file, read by ``bnmodel.table`` as predict
    reads it; every cell must be a finite number."""
    from bnmodel import table

    path = Path(path)
    if not path.is_file():
        raise Int8Error(f"calibration data {path} does not exist or is not a file")
    names = list(feature_names)
    try:
        if table.file_format(path).kind not in ("npy", "npz"):
            _check_feature_columns(path, names)
        chunks = [c.features for c in table.iter_chunks(path, names, role="calibration data")]
    except table.TableError as exc:
        raise Int8Error(str(exc)) from None
    if not chunks:
        raise Int8Error(f"calibration data {path}: expected (N >= 1, {len(names)}) rows, got none")
    return np.concatenate(chunks)


def _check_feature_columns(path: Path, feature_names: list[str]) -> None:
    """A table must name every feature column (the message says which are missing)."""
    from bnmodel import table

    if table.file_format(path).kind == "parquet":
        import pyarrow.parquet as pq

        try:
            header = pq.ParquetFile(path).schema_arrow.names
        except Exception as exc:  # ArrowInvalid, OSError
            raise Int8Error(f"calibration data {path} cannot be read: {exc}") from None
    else:
        header = list(table.csv_layout(path, role="calibration data").header or feature_names)
    missing = [c for c in feature_names if c not in header]
    if missing:
        raise Int8Error(
            f"calibration data {path}: missing feature column(s) {missing[:5]}; the model "
            f"takes {feature_names[:8]}{'...' if len(feature_names) > 8 else ''}"
        )


Feed = dict[str, np.ndarray]  # graph input name -> (N, ...) values


def _batches(feed: Feed, size: int = 64) -> list[Feed]:
    rows = len(next(iter(feed.values())))
    return [{k: v[i : i + size] for k, v in feed.items()} for i in range(0, rows, size)]


class _Rows:
    """onnxruntime.quantization CalibrationDataReader over a feed's rows, 64 at a time."""

    def __init__(self, feed: Feed) -> None:
        self._batches = iter(_batches(feed))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _float_output(model: onnx.ModelProto, output: str) -> None:
    """Drop the QuantizeLinear -> DequantizeLinear pair in front of a graph output."""
    nodes = model.graph.node
    dq = next((n for n in nodes if n.op_type == "DequantizeLinear" and output in n.output), None)
    if dq is None:
        return
    q = next(n for n in nodes if n.op_type == "QuantizeLinear" and dq.input[0] in n.output)
    producer = next(n for n in nodes if q.input[0] in n.output)
    producer.output[list(producer.output).index(q.input[0])] = output
    nodes.remove(dq)
    nodes.remove(q)
    used = {name for n in nodes for name in n.input}
    unused = [t for t in model.graph.initializer if t.name not in used]
    for tensor in unused:  # the pair's scales and zero points
        model.graph.initializer.remove(tensor)


def first_gemm(model: onnx.ModelProto) -> list[str]:
    """The first Gemm's node name: the layer INT8 may keep in float (see ``quantize_int8``)."""
    return [next(n.name for n in model.graph.node if n.op_type == "Gemm")]


def quantize_int8(
    model: onnx.ModelProto, calibration: np.ndarray | Feed, keep_float: Sequence[str] = ()
) -> onnx.ModelProto:
    """Static QDQ, per-channel int8 weights, uint8 activations (MinMax over ``calibration``:
    (N, F) feature rows, or a raw-row model's feed of every input).

    A raw-row model's encoders (imputation, string lookup, one-hot or embedding rows: every
    node named "encode/...") stay in float; quantization starts at its first Gemm.

    ``keep_float``: more node names to leave in float. The first Gemm is the usual candidate:
    its input is the standardized features, quantized with one scale for all of them, and a
    near-constant training feature (tiny std) stretches that scale for every other one.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from .onnx_export import INPUT_NAME

    keep_float = [
        n.name
        for n in model.graph.node
        if n.op_type in _FLOAT_OPS or n.name.startswith(("encode/", "dates/"))
    ] + list(keep_float)
    if not isinstance(calibration, dict):
        calibration = {INPUT_NAME: np.asarray(calibration, np.float32)}
    # quantize_static logs advice to the root logger ("consider pre-processing"): not ours.
    logging.disable(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="bnmodel-int8-") as tmp:
            source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(model, source)
            quantize_static(
                str(source),
                str(target),
                _Rows(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=keep_float,
            )
            quantized = onnx.load(str(target))
    finally:
        logging.disable(logging.NOTSET)
    _float_output(quantized, model.graph.output[0].name)
    onnx.helper.set_model_props(
        quantized,
        {**{p.key: p.value for p in model.metadata_props}, "bnmodel.precision": "int8"},
    )
    return quantized


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def compare_int8(
    fp32: bytes,
    int8: bytes,
    *,
    rows: np.ndarray | Feed,
    targets: np.ndarray | None,
    task: str,
    allowed: float,
    notes: Sequence[str] = (),
) -> Int8Report:
    """fp32 and int8 on the same rows: accuracy (or RMSE) on ``targets``, agreement, differences.

    Without targets a classifier is judged on agreement: every changed class can cost at most
    one correct row, so 100 - agreement bounds the accuracy drop. A regressor needs targets.
    """
    from .onnx_export import INPUT_NAME

    feed = rows if isinstance(rows, dict) else {INPUT_NAME: np.asarray(rows, np.float32)}
    rows = next(iter(feed.values()))  # (N, ...): len() is the row count below
    a, b = _session(fp32).run(None, feed), _session(int8).run(None, feed)
    if task == "classification":
        pred_a, pred_b = a[0].argmax(axis=1), b[0].argmax(axis=1)
        agreement = 100.0 * float((pred_a == pred_b).mean())
        labels = pred_a if targets is None else np.asarray(targets).reshape(-1)
        return Int8Report(
            task,
            len(rows),
            targets is not None,
            100.0 * float((pred_a == labels).mean()),
            100.0 * float((pred_b == labels).mean()),
            agreement,
            float(np.abs(a[1] - b[1]).max()),
            None,
            allowed,
            list(notes),
        )
    if targets is None:
        raise Int8Error(
            "int8 of a regressor needs labeled validation rows to measure the RMSE increase: "
            "the checkpoint's data_spec names none that can be read"
        )
    y = np.asarray(targets, np.float64).reshape(a[0].shape)
    rmse = [math.sqrt(float(np.mean((p.astype(np.float64) - y) ** 2))) for p in (a[0], b[0])]
    diff = float(np.abs(a[0].astype(np.float64) - b[0]).max())
    return Int8Report(task, len(rows), True, *rmse, None, None, diff, allowed, list(notes))
