"""``export_checkpoint``: checkpoint in, folded ONNX (and a model repository) out, with proof.

The one library function behind ``bnmodel export`` and the demo. Order matters: fold, build
both graphs, check them, verify (and quantize and check INT8), and only then write, so a
failed export leaves no files. The written model gets its report beside it as JSON.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from bnmodel import __version__
from bnmodel.checkpoint import Checkpoint, CheckpointError, file_sha256, load_checkpoint
from bnmodel.contract import ModelContract
from bnmodel.dates import DATE_PARTS
from bnmodel.encoding import Preprocessing
from bnmodel.errors import UsageError
from bnmodel.files import atomic_write_bytes
from bnmodel.model import Standardize

from .fold import FoldReport, fold_model
from .fp16 import fp16_range_warnings
from .int8 import (
    CALIBRATION_ROWS,
    DEFAULT_MAX_ACCURACY_DROP,
    DEFAULT_MAX_RMSE_INCREASE,
    Int8AccuracyError,
    Int8Error,
    Int8Report,
    compare_int8,
    first_gemm,
    quantize_int8,
    read_feature_rows,
)
from .onnx_export import DEFAULT_OPSET, ExportError, build_onnx, check_onnx, save_onnx
from .repository import (
    RepositoryPaths,
    model_config,
    validate_layout,
    write_repository,
)
from .verify import BATCH_SIZES, EquivalenceReport, Rows, verify_equivalence

__all__ = ["ExportResult", "export_checkpoint"]


@dataclass
class ExportResult:
    folded: bool  # whether the written graph is the folded one
    fold_report: FoldReport
    checkpoint_sha256: str
    onnx_path: Path | None = None
    repository: RepositoryPaths | None = None
    report: EquivalenceReport | None = None  # None with verify=False
    int8: Int8Report | None = None  # None without int8=True
    warnings: list[str] = field(default_factory=list)
    precision: str = "fp32"
    report_paths: list[Path] = field(default_factory=list)  # the JSON beside each model
    model: onnx.ModelProto | None = None  # the graph written (or that would be): in memory

    @property
    def paths(self) -> list[Path]:
        repo = [] if self.repository is None else [self.repository.config, self.repository.model]
        return ([self.onnx_path] if self.onnx_path else []) + repo + self.report_paths

    def format(self, verbose: bool = False) -> str:
        """Folding steps, warnings, one line per comparison group (``verbose``: the full table)."""
        summary = self.fold_report.summary()
        lines = ["folding:" if summary else "folding: nothing to fold"]
        lines += [f"  {line}" for line in summary]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.report is not None:
            lines.append(self.report.format(verbose))
        if self.int8 is not None:
            lines.append(self.int8.format())
            lines += [f"note: {n}" for n in self.int8.notes]
        lines += [f"wrote {p}" for p in self.paths]
        return "\n".join(lines)

    __str__ = format

    def to_dict(self) -> dict[str, object]:
        """What the JSON beside the model holds."""
        return {
            "precision": self.precision,
            "checkpoint_sha256": self.checkpoint_sha256,
            "folded": self.folded,
            "folding": self.fold_report.to_dict(),
            "warnings": list(self.warnings),
            "equivalence": None if self.report is None else self.report.to_dict(),
            "int8": None if self.int8 is None else self.int8.to_dict(),
        }


def _load(checkpoint: Checkpoint | str | os.PathLike[str]) -> tuple[Checkpoint, str, str]:
    """(checkpoint, sha256 of its file, default model name)."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint, "unknown (in-memory checkpoint)", "model"
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    return ckpt, file_sha256(path), path.stem.replace(" ", "_") or "model"


def _build_model(ckpt: Checkpoint) -> nn.Module:
    try:
        return ckpt.build_model()
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint model_state does not match its model_config: {exc}"
        ) from exc


def _class_labels(ckpt: Checkpoint) -> list[str] | None:
    """Labels for a classifier (index strings when the checkpoint has none), None for regression."""
    if ckpt.task != "classification":
        return None
    width = ckpt.model_config.out_features
    labels = [str(i) for i in range(width)] if ckpt.class_labels is None else ckpt.class_labels
    if len(labels) != width:
        raise ExportError(
            f"checkpoint has {len(labels)} class_labels but the model has {width} outputs"
        )
    return [str(label) for label in labels]


def _contract(ckpt: Checkpoint) -> ModelContract:
    """The exported model's data contract (ONNX metadata and config.pbtxt say the same)."""
    labels = _class_labels(ckpt)
    target = ckpt.target_name or ""
    return ModelContract(
        task=ckpt.task,
        feature_names=tuple(ckpt.feature_names),
        categorical_columns=tuple(ckpt.categorical_columns),
        class_labels=None if labels is None else tuple(labels),
        target_names=tuple(t.strip() for t in target.split(",")) if target else (),
        imputes=ckpt.preprocessing is not None,
        vocabularies=None
        if ckpt.preprocessing is None
        else tuple(tuple(ckpt.preprocessing["vocabularies"][c]) for c in ckpt.categorical_columns),
        date_columns=tuple((ckpt.preprocessing or {}).get("dates", ())),
    )


def _feature_width(ckpt: Checkpoint) -> int:
    """Columns of the "features" input: the model's numeric inputs less the date features,
    which the graph computes from the date inputs."""
    dates = (ckpt.preprocessing or {}).get("dates", ())
    return ckpt.model_config.in_features - len(DATE_PARTS) * len(dates)


def _metadata(
    ckpt: Checkpoint, sha: str, fold_report: FoldReport | None, opset: int, fp16: bool
) -> dict[str, str]:
    import onnxruntime
    import torch

    folded = {"folded": [], "note": "unfolded reference graph (--no-fold)"}
    raw = {}
    if ckpt.preprocessing is not None:  # raw-row model: its encoders, applied in the graph
        raw = {"bnmodel.preprocessing": json.dumps(ckpt.preprocessing)}
    return {
        **_contract(ckpt).to_metadata(),
        **raw,
        "bnmodel.folded": json.dumps(folded if fold_report is None else fold_report.to_dict()),
        "bnmodel.checkpoint_sha256": sha,
        "bnmodel.precision": "fp16" if fp16 else "fp32",  # int8.quantize_int8 sets "int8"
        "bnmodel.model_config": json.dumps(ckpt.model_config.to_dict()),
        "bnmodel.versions": json.dumps(
            {
                "bnmodel": __version__,
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "opset": opset,
                "onnxruntime": onnxruntime.__version__,
            }
        ),
    }


@dataclass
class _Data:
    """The checkpoint's training data, re-read through its data_spec, and what was found."""

    train: np.ndarray | Rows | None = None  # (N, F) training rows: INT8 calibration
    validation: np.ndarray | Rows | None = None  # (M, F), or raw rows of a raw-row model
    targets: np.ndarray | None = None  # validation targets
    notes: list[str] = field(default_factory=list)


def _data(ckpt: Checkpoint, given: np.ndarray | Rows | None) -> _Data:
    """Validation rows (``given`` or the checkpoint's split) and a note saying where from."""
    random_note = "random rows: standard normal in the model's standardized input space"
    if given is not None:
        rows = given if isinstance(given, Rows) else np.asarray(given, np.float32)
        return _Data(validation=rows, notes=[f"validation rows: {len(rows)} given", random_note])
    if ckpt.data_spec is None:
        return _Data(notes=["no data_spec in the checkpoint: verified on random rows only"])
    try:
        from bnmodel.data import validation_split

        train, val = validation_split(ckpt.data_spec)
    except Exception as exc:  # any failure to re-read the data falls back, and says so
        why = f"{type(exc).__name__}: {exc}"
        return _Data(notes=[f"validation rows unavailable ({why}): verified on random rows only"])
    source = ckpt.data_spec.get("source", "data_spec")
    features = getattr(train, "features", None)
    train_rows = None if features is None else np.asarray(features, np.float32)
    validation = np.asarray(val.features, np.float32)
    if ckpt.preprocessing is not None:
        validation = Rows(validation, getattr(val, "categories", None), getattr(val, "dates", None))
        train_rows = Rows(
            train_rows, getattr(train, "categories", None), getattr(train, "dates", None)
        )
    return _Data(
        train_rows,
        validation,
        getattr(val, "targets", None),
        [f"validation rows: {len(val.features)} rows from {source}", random_note],
    )


def _target_scale_notes(fold_report: FoldReport) -> list[str]:
    """Say where a regressor's target de-standardization went: the reference compared above
    includes it, so matching outputs prove the graph emits target units."""
    return [
        f"target units: y = z * std + mean ({step.sources[0]}) folded into "
        f"{step.target_label or step.target}; the folded graph has no node for it"
        for step in fold_report.steps
        if step.kind == "linear<-target_scale"
    ]


def _preprocessing(ckpt: Checkpoint) -> Preprocessing | None:
    if ckpt.preprocessing is None:
        return None
    try:
        return Preprocessing.from_dict(ckpt.preprocessing)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint preprocessing is malformed: {exc}") from exc


def _encoder_notes(ckpt: Checkpoint) -> list[str]:
    """Where a raw-row model's encoders went, one line."""
    prep = _preprocessing(ckpt)
    if prep is None:
        return []
    from .onnx_export import ONE_HOT_MAX_SLOTS

    columns = [
        f"{c} ({len(v) + 1} slots, "
        + ("one-hot into Linear 1" if len(v) + 1 <= ONE_HOT_MAX_SLOTS else "Gather of its table")
        + ")"
        for c, v in zip(prep.categorical, prep.vocabularies, strict=True)
    ]
    parts = [f"{len(prep.numeric)} numeric column(s) imputed with the training {prep.impute}"]
    if prep.dates:
        parts.append(
            f"date features ({', '.join(DATE_PARTS)}) computed from the seconds of "
            + ", ".join(prep.dates)
        )
    if prep.indicators:
        parts.append(f"missing indicators for {', '.join(prep.indicators)}")
    if columns:
        parts.append("categorical " + ", ".join(columns))
    return ["encoders (in the graph): " + "; ".join(parts)]


def _graph(
    model: nn.Module, ckpt: Checkpoint, fp16: bool, opset: int, metadata: dict[str, str]
) -> onnx.ModelProto:
    prep = _preprocessing(ckpt)
    categorical = (
        [] if prep is None else list(zip(prep.categorical, prep.vocabularies, strict=True))
    )
    proto = build_onnx(
        list(model.net.named_children()),
        task=ckpt.task,
        in_features=ckpt.model_config.in_features,
        fp16=fp16,
        opset=opset,
        metadata=metadata,
        categorical=categorical,
        dates=[] if prep is None else list(zip(prep.dates, prep.date_origins, strict=True)),
    )
    check_onnx(proto)
    return proto


def _fp16_check(model: nn.Module) -> list[str]:
    tensors = {
        f"net.{name}": value
        for name, value in model.net.state_dict().items()
        if value.is_floating_point()
    }
    return fp16_range_warnings(tensors)


def _check_destinations(
    output: str | os.PathLike[str] | None, fold: bool, fp16: bool, int8: bool
) -> None:
    if output is not None and Path(output).is_dir():
        raise ExportError(
            f"-o {output} is an existing folder; give the ONNX file to write, e.g. "
            f"{Path(output) / 'model.onnx'}"
        )
    if int8 and (fp16 or not fold):
        raise UsageError("--int8 quantizes the folded fp32 graph: drop --fp16 and --no-fold")


def _raw_rows(path: str | os.PathLike[str], prep: Preprocessing) -> Rows:
    """A raw-row model's calibration rows from a table, read as predict reads it."""
    from bnmodel import table

    try:
        chunks = list(
            table.iter_chunks(
                path,
                list(prep.numeric),
                prep.categorical,
                allow_missing=True,
                role="calibration data",
                dates=prep.dates,
            )
        )
    except table.TableError as exc:
        raise Int8Error(str(exc)) from None
    if not chunks:
        raise Int8Error(f"calibration data {path} has no data rows")
    numeric = np.concatenate([c.features for c in chunks])
    cats = [c.categories for c in chunks if c.categories is not None]
    dates = [c.dates for c in chunks if c.dates is not None]
    return Rows(
        numeric, np.concatenate(cats) if cats else None, np.concatenate(dates) if dates else None
    )


def _int8(
    model: nn.Module,
    ckpt: Checkpoint,
    fp32: onnx.ModelProto,
    data: _Data,
    calibration_data: str | os.PathLike[str] | None,
    allowed: float,
) -> tuple[onnx.ModelProto, Int8Report]:
    """Quantize the folded graph (input standardization kept), then check it against fp32."""
    prep = _preprocessing(ckpt)
    if calibration_data is not None:
        if prep is None:
            calibration = read_feature_rows(calibration_data, ckpt.feature_names)
        else:
            calibration = _raw_rows(calibration_data, prep)
        source = f"calibration: {len(calibration)} rows of {calibration_data}"
    elif data.train is not None:
        calibration, source = data.train, "calibration: training rows of the checkpoint's data"
    else:
        raise Int8Error(
            "--int8 needs calibration rows: the checkpoint's training data cannot be read "
            f"({'; '.join(data.notes)}); pass --calibration-data FILE"
        )
    if len(calibration) > CALIBRATION_ROWS:  # a seeded sample: the same file, the same graph
        pick = np.random.default_rng(0).choice(len(calibration), CALIBRATION_ROWS, replace=False)
        pick = np.sort(pick)
        calibration = calibration.take(pick) if isinstance(calibration, Rows) else calibration[pick]
    folded, _ = fold_model(model, keep_standardize=True)
    metadata = {p.key: p.value for p in fp32.metadata_props}
    source_graph = _graph(folded, ckpt, False, fp32.opset_import[0].version, metadata)
    rows, targets = data.validation, data.targets
    notes = [f"{source} ({len(calibration)} used)"]
    if prep is not None:  # the graphs' inputs: "features" and one string tensor per column
        notes.append("int8 graph: imputation and categorical lookups stay in float")
        numeric = bool(ckpt.feature_names)
        calibration = calibration.feed(prep.categorical, numeric, prep.dates)
        rows = None if rows is None else rows.feed(prep.categorical, numeric, prep.dates)
    if any(isinstance(m, Standardize) for m in folded.net):
        notes.append(
            "int8 graph: the input standardization stays a float Sub/Div ahead of the first "
            "Gemm (folding 1/std into per-channel int8 weights costs accuracy)"
        )
    if rows is None:
        rows, targets = calibration, None
        notes.append("no validation rows: int8 compared with fp32 on the calibration rows")
    compare = functools.partial(
        compare_int8,
        fp32.SerializeToString(),
        rows=rows,
        targets=targets,
        task=ckpt.task,
        allowed=allowed,
    )
    return _first_good_variant(source_graph, calibration, compare, notes)


def _first_good_variant(
    source: onnx.ModelProto,
    calibration: np.ndarray,
    compare: Callable[..., Int8Report],
    notes: list[str],
) -> tuple[onnx.ModelProto, Int8Report]:
    """Fastest first: every Gemm in int8; if that loses too much, the first Gemm in float."""
    variants = [("every Linear in int8", ()), ("Linear 1 kept in float", first_gemm(source))]
    for index, (variant, keep_float) in enumerate(variants):
        quantized = quantize_int8(source, calibration, keep_float)
        check_onnx(quantized)
        report = compare(
            int8=quantized.SerializeToString(), notes=[*notes, f"int8 variant: {variant}"]
        )
        if report.ok:
            return quantized, report
        if index + 1 < len(variants):
            notes.append(f"{variant}: drop {report.drop:.2f} > {report.allowed:g}, tried the next")
    raise Int8AccuracyError(report)


def export_checkpoint(
    checkpoint: Checkpoint | str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    repository: str | os.PathLike[str] | None = None,
    name: str | None = None,
    version: int = 1,
    fold: bool = True,
    fp16: bool = False,
    int8: bool = False,
    calibration_data: str | os.PathLike[str] | None = None,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    max_rmse_increase: float = DEFAULT_MAX_RMSE_INCREASE,
    max_batch_size: int = 1024,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    validation_rows: np.ndarray | Rows | None = None,
) -> ExportResult:
    """Fold, write ONNX to ``output`` and/or ``repository``/NAME/VERSION, verify before writing.

    Neither destination given: only verify (``bnmodel export --verify-only``). ``int8``: write
    the statically quantized folded graph, refused when accuracy drops by more than
    ``max_accuracy_drop`` points (classifier) or RMSE rises by more than ``max_rmse_increase``
    percent (regressor) on the validation rows. ``validation_rows``: verify on these rows (an
    (N, F) array, or ``verify.Rows`` for a raw-row model) instead of the checkpoint's
    validation split. Raises UsageError (arguments that cannot go together),
    CheckpointError, FoldError, ExportError, Fp16RangeError, ExportMismatchError, Int8Error or
    Int8AccuracyError (all ValueError), in which case nothing is written.
    """
    _check_destinations(output, fold, fp16, int8)
    ckpt, sha, default_name = _load(checkpoint)
    name = name or default_name
    if repository is not None:
        validate_layout(name, version, max_batch_size)
    model = _build_model(ckpt)
    folded, fold_report = fold_model(model)
    chosen = folded if fold else model
    warnings = _fp16_check(chosen) if fp16 else []
    graphs = {
        is_folded: _graph(
            m,
            ckpt,
            fp16,
            opset,
            _metadata(ckpt, sha, fold_report if is_folded else None, opset, fp16),
        )
        for is_folded, m in ((True, folded), (False, model))
    }
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    result = ExportResult(fold, fold_report, sha, warnings=warnings, precision=precision)
    data = _data(ckpt, validation_rows) if verify or int8 else _Data()
    if verify:
        result.report = verify_equivalence(
            model,
            folded,
            graphs[True].SerializeToString(),
            graphs[False].SerializeToString(),
            task=ckpt.task,
            in_features=_feature_width(ckpt),
            validation_rows=data.validation,
            fp16=fp16,
            batch_sizes=BATCH_SIZES,
            notes=[*data.notes, *_target_scale_notes(fold_report), *_encoder_notes(ckpt)],
            preprocessing=_preprocessing(ckpt),
        )
        result.report.raise_for_mismatch()
    proto = graphs[fold]
    if int8:
        allowed = max_accuracy_drop if ckpt.task == "classification" else max_rmse_increase
        proto, result.int8 = _int8(model, ckpt, graphs[True], data, calibration_data, allowed)
    _write(result, proto, ckpt, output, repository, name, version, max_batch_size, fp16)
    result.model = proto
    return result


def _write(
    result: ExportResult,
    proto: onnx.ModelProto,
    ckpt: Checkpoint,
    output: str | os.PathLike[str] | None,
    repository: str | os.PathLike[str] | None,
    name: str,
    version: int,
    max_batch_size: int,
    fp16: bool,
) -> None:
    """Each model, then its report JSON beside it (then the repository's config)."""
    report_text = json.dumps(result.to_dict(), indent=2) + "\n"
    if output is not None:
        result.onnx_path = save_onnx(proto, output)
        report = result.onnx_path.with_suffix(".report.json")
        result.report_paths.append(atomic_write_bytes(report, report_text.encode()))
    if repository is not None:
        outputs = [(o.name, o.type.tensor_type.shape.dim[1].dim_value) for o in proto.graph.output]
        config = model_config(
            name,
            in_features=_feature_width(ckpt),
            outputs=outputs,
            fp16=fp16,
            max_batch_size=max_batch_size,
            contract=_contract(ckpt),
        )
        result.repository = write_repository(
            repository, name, version, proto.SerializeToString(), config, report_text
        )
        result.report_paths.append(result.repository.report)
