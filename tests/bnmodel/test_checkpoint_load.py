"""Checkpoints load without running pickled code; damaged or foreign files are refused cleanly."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from bnmodel.checkpoint import CheckpointError, load_checkpoint
from bnmodel.config import ModelConfig
from bnmodel.train import TrainConfig, train

MARKER = "bnmodel-tamper-marker"


class Evil:
    def __reduce__(self):
        return (print, (MARKER,))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    config = TrainConfig(
        data="synthetic:120,4,2",
        model=ModelConfig(hidden_sizes=(8,)),
        epochs=1,
        batch_size=16,
        device="cpu",
        out_dir=out,
    )
    return train(config, progress=False).last_checkpoint


def test_tampered_checkpoint_is_refused_not_run(trained: Path, tmp_path: Path, capsys) -> None:
    payload = torch.load(trained, weights_only=True)
    payload["metrics"] = Evil()  # a pickled callable smuggled into a valid-looking file
    tampered = tmp_path / "tampered.pt"
    torch.save(payload, tampered)
    with pytest.raises(CheckpointError, match="tampered"):
        load_checkpoint(tampered)
    assert MARKER not in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_truncated_and_foreign_files(trained: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(trained.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(truncated)
    foreign = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a bnmodel checkpoint"):
        load_checkpoint(foreign)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(plain)


def test_checkpoint_has_everything_export_needs(trained: Path) -> None:
    ckpt = load_checkpoint(trained)
    model = ckpt.build_model()
    assert not model.training
    assert model(torch.zeros(3, 4)).shape == (3, 2)
    assert ckpt.feature_names == ["x0", "x1", "x2", "x3"] and ckpt.class_labels == ["0", "1"]
    assert ckpt.data_spec["val_fraction"] == 0.2 and ckpt.task == "classification"
