"""What export refuses, and how: one line naming what is wrong, exit 1, nothing written."""

from __future__ import annotations

import math
import re
from pathlib import Path

import onnx
import pytest
import torch
from bnmodel.export.api import export_checkpoint
from bnmodel.export.fold import FoldError, fold_model
from export_testlib import make_checkpoint, make_model

from bnmodel import files
from bnmodel.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bnmodel.cli import main

# make_model: net.0 Standardize, net.1 Linear, net.2 BN, net.3 ReLU, net.4 Linear, net.5 BN, ...
BROKEN = [
    (
        "net.5.running_var",
        3,
        math.nan,
        r"hidden layer 2 BN \(net.5\): running_var is not finite "
        r"at channel 3: nan",
    ),
    (
        "net.2.running_mean",
        1,
        math.inf,
        r"hidden layer 1 BN \(net.2\): running_mean is not "
        r"finite at channel 1: inf",
    ),
    (
        "net.5.weight",
        0,
        -math.inf,
        r"hidden layer 2 BN \(net.5\): weight is not finite at "
        r"channel 0",
    ),
    (
        "net.5.running_var",
        6,
        -1.0,
        r"hidden layer 2 BN \(net.5\): running_var \+ eps <= 0 at "
        r"channel 6: -1",
    ),
    (
        "net.4.weight",
        (2, 5),
        math.nan,
        r"Linear 2 \(net.4\): weight is not finite at channel 2, "
        r"input 5",
    ),
    ("net.0.std", 4, 0.0, r"input standardization \(net.0\): std <= 0 at channel 4"),
]


def _break(path: Path, key: str, index, value: float) -> Path:
    ckpt = load_checkpoint(path)
    ckpt.model_state[key][index] = value
    return save_checkpoint(ckpt, path)


@pytest.mark.parametrize(("key", "index", "value", "message"), BROKEN)
def test_broken_statistics_are_refused_naming_layer_and_channel(
    checkpoint_path: Path, key: str, index, value: float, message: str
) -> None:
    with pytest.raises(FoldError, match=message):
        fold_model(load_checkpoint(_break(checkpoint_path, key, index, value)).build_model())


@pytest.mark.parametrize(("key", "index", "value", "message"), BROKEN[:4])
def test_cli_refuses_broken_statistics_even_without_verification(
    checkpoint_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    key: str,
    index,
    value: float,
    message: str,
) -> None:
    _break(checkpoint_path, key, index, value)
    out = tmp_path / "out"
    args = ["export", str(checkpoint_path), "-o", str(out / "m.onnx"), "--repository"]
    assert main([*args, str(out / "repo"), "--no-verify"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("bnmodel export: error: ") and re.search(message, err)
    assert not out.exists()


def test_fold_overflowing_float32_is_refused() -> None:
    model = make_model(bn_eps=1e-12)
    with torch.no_grad():
        model.net[2].running_var.fill_(1e-80)  # float32 0: scale gamma / 1e-6
        model.net[2].weight.fill_(1e35)
    with pytest.raises(FoldError, match=r"folding hidden layer 1 BN into Linear 1 overflows"):
        fold_model(model)


@pytest.mark.parametrize(
    "content",
    [b"a,b\n1,2\n", b"\x08\x07\x12\x07bnmodel", b"\x80\x04\x95 pickle"],
    ids=["csv", "onnx", "pickle"],
)
def test_a_file_that_is_not_a_checkpoint_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"is not a bnmodel checkpoint"):
        load_checkpoint(path)
    assert main(["export", str(path), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "is not a bnmodel checkpoint" in err and "tampered" not in err


def test_an_onnx_file_given_as_checkpoint_says_so(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), path)
    with pytest.raises(CheckpointError, match=r"model.onnx is not a bnmodel checkpoint"):
        load_checkpoint(path)


def test_output_naming_an_existing_folder_is_a_clear_error(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["export", str(checkpoint_path), "-o", str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"-o {folder} is an existing folder" in err and "model.onnx" in err
    assert list(folder.iterdir()) == []


def test_a_failed_write_leaves_no_temp_file(
    checkpoint_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(files.os, "replace", fail)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        export_checkpoint(checkpoint_path, output=out / "m.onnx", verify=False)
    assert not out.exists()  # no temp file, and not the folder created for the file either


def test_checkpoint_save_leaves_no_temp_file_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    path = make_checkpoint(tmp_path / "a.pt")
    ckpt = load_checkpoint(path)
    monkeypatch.setattr(torch, "save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(ckpt, tmp_path / "b.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]
