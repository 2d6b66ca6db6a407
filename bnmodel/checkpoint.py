"""Training checkpoints: one self-contained file for export, loaded without running pickled code.

The file is ``torch.save`` of plain containers, strings, numbers and tensors, read back with
``torch.load(weights_only=True)``: a file that smuggles in a pickled callable is refused, not run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from bnmodel.config import ModelConfig
from bnmodel.files import atomic_open
from bnmodel.model import BNMLP

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "file_sha256",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT = "bnmodel-checkpoint/1"
Task = Literal["classification", "regression"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, tampered with or not a bnmodel checkpoint."""


@dataclass
class Checkpoint:
    model_config: ModelConfig
    model_state: dict[str, torch.Tensor]
    task: Task
    feature_names: list[str]
    target_name: str | None = None
    # Classifier output i means class_labels[i]; None for regression.
    class_labels: list[str] | None = None
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    # Where the rows came from and how they were split (source, target, seed, val_fraction), so
    # export can verify on the same validation rows; None when unknown.
    data_spec: dict[str, Any] | None = None
    # Optimizer, scheduler, RNG and early-stopping state for --resume; None in export-only files.
    training_state: dict[str, Any] | None = None
    # Raw tables: encoding.Preprocessing.to_dict() (vocabularies, imputation values, indicator
    # and categorical columns); None when the model takes numeric features only.
    preprocessing: dict[str, Any] | None = None

    @property
    def categorical_columns(self) -> list[str]:
        return list((self.preprocessing or {}).get("categorical", []))

    def build_model(self) -> BNMLP:
        """The trained model in eval mode, on the CPU."""
        model = BNMLP(self.model_config)
        model.load_state_dict(self.model_state)
        return model.eval()


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename), so an interrupted save never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model_config": ckpt.model_config.to_dict(),
        "model_state": {k: v.detach().cpu() for k, v in ckpt.model_state.items()},
        "task": ckpt.task,
        "feature_names": list(ckpt.feature_names),
        "target_name": ckpt.target_name,
        "class_labels": None if ckpt.class_labels is None else list(ckpt.class_labels),
        "epoch": int(ckpt.epoch),
        "metrics": {k: float(v) for k, v in ckpt.metrics.items()},
        "data_spec": ckpt.data_spec,
        "training_state": ckpt.training_state,
        "preprocessing": ckpt.preprocessing,
    }
    with atomic_open(path) as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(
            f"{path} is not a bnmodel checkpoint (not a file torch.save wrote: it starts with "
            f"{magic!r}); pass the .pt file that `bnmodel train` writes"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know: a tampered file lands here.
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data; refusing to load "
            "it (it may have been tampered with)"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated or not a torch checkpoint file)"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"{path} is not a bnmodel checkpoint: format {found!r}, expected {FORMAT!r}"
        )
    try:
        config = ModelConfig.from_dict(payload["model_config"])
        return Checkpoint(
            model_config=config,
            model_state=payload["model_state"],
            task=payload["task"],
            feature_names=payload["feature_names"],
            target_name=payload.get("target_name"),
            class_labels=payload.get("class_labels"),
            epoch=payload.get("epoch", 0),
            metrics=payload.get("metrics", {}),
            data_spec=payload.get("data_spec"),
            training_state=payload.get("training_state"),
            preprocessing=payload.get("preprocessing"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is incomplete or malformed: {exc}") from exc


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
