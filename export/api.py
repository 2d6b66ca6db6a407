"""``export_checkpoint``: checkpoint in, folded ONNX (and a model repository) out, with proof.

The one library function behind ``bnmodel export`` and the demo. Order matters: fold, build
both graphs, check them, verify, and only then write, so a failed export leaves no files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from bnmodel import __version__
from bnmodel.checkpoint import Checkpoint, CheckpointError, file_sha256, load_checkpoint

from .fold import FoldReport, fold_model
from .fp16 import fp16_range_warnings
from .onnx_export import DEFAULT_OPSET, ExportError, build_onnx, check_onnx, save_onnx
from .repository import (
    RepositoryPaths,
    model_config_text,
    validate_layout,
    write_repository,
)
from .verify import BATCH_SIZES, EquivalenceReport, verify_equivalence

__all__ = ["ExportResult", "export_checkpoint"]


@dataclass
class ExportResult:
    folded: bool  # whether the written graph is the folded one
    fold_report: FoldReport
    checkpoint_sha256: str
    onnx_path: Path | None = None
    repository: RepositoryPaths | None = None
    report: EquivalenceReport | None = None  # None with verify=False
    warnings: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        repo = [] if self.repository is None else [self.repository.config, self.repository.model]
        return ([self.onnx_path] if self.onnx_path else []) + repo

    def format(self) -> str:
        lines = ["folding:" if self.fold_report.summary() else "folding: nothing to fold"]
        lines += [f"  {line}" for line in self.fold_report.summary()]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.report is not None:
            lines.append(self.report.format())
        lines += [f"wrote {p}" for p in self.paths]
        return "\n".join(lines)

    __str__ = format


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


def _metadata(
    ckpt: Checkpoint, sha: str, fold_report: FoldReport | None, opset: int, fp16: bool
) -> dict[str, str]:
    import onnxruntime
    import torch

    folded = {"folded": [], "note": "unfolded reference graph (--no-fold)"}
    return {
        "bnmodel.task": ckpt.task,
        "bnmodel.feature_names": json.dumps(list(ckpt.feature_names)),
        "bnmodel.class_labels": json.dumps(_class_labels(ckpt) or []),
        "bnmodel.target_name": ckpt.target_name or "",
        "bnmodel.folded": json.dumps(folded if fold_report is None else fold_report.to_dict()),
        "bnmodel.checkpoint_sha256": sha,
        "bnmodel.precision": "fp16" if fp16 else "fp32",
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


def _validation_rows(
    ckpt: Checkpoint, given: np.ndarray | None
) -> tuple[np.ndarray | None, list[str]]:
    """The rows to verify on, and a note saying where they came from (or why there are none)."""
    random_note = "random rows: standard normal in the model's standardized input space"
    if given is not None:
        return np.asarray(given, np.float32), [f"validation rows: {len(given)} given", random_note]
    if ckpt.data_spec is None:
        return None, ["no data_spec in the checkpoint: verified on random rows only", random_note]
    try:
        from bnmodel.data import validation_split

        rows = np.asarray(validation_split(ckpt.data_spec)[1].features, np.float32)
    except Exception as exc:  # any failure to re-read the data falls back, and says so
        why = f"{type(exc).__name__}: {exc}"
        return None, [
            f"validation rows unavailable ({why}): verified on random rows only",
            random_note,
        ]
    source = ckpt.data_spec.get("source", "data_spec")
    return rows, [f"validation rows: {len(rows)} rows from {source}", random_note]


def _target_scale_notes(fold_report: FoldReport) -> list[str]:
    """Say where a regressor's target de-standardization went: the reference compared above
    includes it, so matching outputs prove the graph emits target units."""
    return [
        f"target units: y = z * std + mean ({'+'.join(step.sources)}) folded into "
        f"{step.target}; the folded graph has no node for it"
        for step in fold_report.steps
        if step.kind == "linear<-target_scale"
    ]


def _graph(
    model: nn.Module, ckpt: Checkpoint, fp16: bool, opset: int, metadata: dict[str, str]
) -> onnx.ModelProto:
    proto = build_onnx(
        list(model.net.named_children()),
        task=ckpt.task,
        in_features=ckpt.model_config.in_features,
        fp16=fp16,
        opset=opset,
        metadata=metadata,
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


def export_checkpoint(
    checkpoint: Checkpoint | str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    repository: str | os.PathLike[str] | None = None,
    name: str | None = None,
    version: int = 1,
    fold: bool = True,
    fp16: bool = False,
    max_batch_size: int = 1024,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    validation_rows: np.ndarray | None = None,
) -> ExportResult:
    """Fold, write ONNX to ``output`` and/or ``repository``/NAME/VERSION, verify before writing.

    Neither destination given: only verify (``bnmodel export --verify-only``). Raises
    CheckpointError, FoldError, ExportError, Fp16RangeError or ExportMismatchError (all
    ValueError), in which case nothing is written.
    """
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
    result = ExportResult(fold, fold_report, sha, warnings=warnings)
    if verify:
        rows, notes = _validation_rows(ckpt, validation_rows)
        notes += _target_scale_notes(fold_report)
        result.report = verify_equivalence(
            model,
            folded,
            graphs[True].SerializeToString(),
            graphs[False].SerializeToString(),
            task=ckpt.task,
            in_features=ckpt.model_config.in_features,
            validation_rows=rows,
            fp16=fp16,
            batch_sizes=BATCH_SIZES,
            notes=notes,
        )
        result.report.raise_for_mismatch()
    _write(result, graphs[fold], ckpt, output, repository, name, version, max_batch_size, fp16)
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
    if output is not None:
        result.onnx_path = save_onnx(proto, output)
    if repository is not None:
        outputs = [(o.name, o.type.tensor_type.shape.dim[1].dim_value) for o in proto.graph.output]
        config = model_config_text(
            name,
            task=ckpt.task,
            in_features=ckpt.model_config.in_features,
            outputs=outputs,
            fp16=fp16,
            max_batch_size=max_batch_size,
            feature_names=ckpt.feature_names,
            class_labels=_class_labels(ckpt),
        )
        result.repository = write_repository(
            repository, name, version, proto.SerializeToString(), config
        )
