"""The train and compare-bn subcommands: help, error exits, a tiny run, no heavy imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bnmodel.cli import main


@pytest.mark.parametrize("command", ["train", "compare-bn"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_cli_module_does_not_import_torch() -> None:
    code = "import sys, bnmodel.train_cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize(
    ("argv", "message", "code"),
    [
        (["--batch-size", "1"], "--batch-size must be >= 2", 2),  # a flag: usage
        (["--data", "missing.csv"], "missing.csv does not exist", 1),  # the data
        (["--resume", "nowhere.pt"], "nowhere.pt does not exist", 1),  # the checkpoint
    ],
)
def test_errors_exit_with_their_code_and_message(
    argv: list[str], message: str, code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--device", "cpu", "--out", str(tmp_path), *argv]) == code
    err = capsys.readouterr().err
    assert err.startswith("bnmodel train: error:") and message in err


def test_argparse_rejects_bad_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--bn", "middle"])
    assert info.value.code == 2 and "--bn" in capsys.readouterr().err


def test_tiny_run_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "train",
        "--data",
        "synthetic:200,6,3",
        "--hidden",
        "12",
        "--epochs",
        "2",
        "--bn-momentum",
        "none",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert (
        "best val_loss" in out
        and "validation (best.pt): loss" in out
        and str(tmp_path / "best.pt") in out
    )
    assert (tmp_path / "metrics.png").is_file()
