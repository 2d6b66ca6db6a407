"""One exit-code convention for every subcommand (bnmodel/errors.py, mapped in bnmodel.cli.main):
2 for a command line that cannot run, 1 for a failure on the data, model or files, each with
one line on stderr naming what is at fault."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bnmodel import cli
from bnmodel.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit code, stderr) of ``bnmodel ARGV``, argparse's own exits included."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def one_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bnmodel {command}: error: "), err
    return lines[0]


def test_train(tmp_path: Path, capsys) -> None:
    code, err = run(["train", "--batch-size", "1", "--out", str(tmp_path)], capsys)
    assert code == EXIT_USAGE and "--batch-size must be >= 2" in one_line(err, "train")
    code, err = run(["train", "--data", str(tmp_path / "x.csv"), "--out", str(tmp_path)], capsys)
    assert code == EXIT_FAILED and "x.csv does not exist" in one_line(err, "train")
    code, err = run(["train", "--hidden", "many"], capsys)
    assert code == EXIT_USAGE and "--hidden" in err


def test_compare_bn(tmp_path: Path, capsys) -> None:
    (tmp_path / "compare_bn.csv").write_text("")
    code, err = run(["compare-bn", "--out", str(tmp_path)], capsys)
    assert code == EXIT_USAGE and "pass --overwrite" in one_line(err, "compare-bn")
    assert run(["compare-bn", "--epochs", "x"], capsys)[0] == EXIT_USAGE


def test_export(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "absent.pt"
    code, err = run(["export", str(missing)], capsys)
    assert code == EXIT_USAGE and "say where to write" in one_line(err, "export")
    code, err = run(["export", str(missing), "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == EXIT_FAILED and str(missing) in one_line(err, "export")


def test_predict_and_evaluate(tmp_path: Path, capsys) -> None:
    model, rows = str(tmp_path / "absent.onnx"), str(tmp_path / "rows.csv")
    code, err = run(
        ["predict", model, "--input", rows, "--output", rows, "--chunk-rows", "0"], capsys
    )
    assert code == EXIT_USAGE and "--chunk-rows" in err
    code, err = run(
        ["predict", model, "--input", rows, "--output", str(tmp_path / "o.csv")], capsys
    )
    assert code == EXIT_FAILED and "absent.onnx does not exist" in one_line(err, "predict")
    assert run(["evaluate", model], capsys)[0] == EXIT_USAGE  # --data is required
    code, err = run(["evaluate", model, "--data", rows], capsys)
    assert code == EXIT_FAILED and "absent.onnx" in one_line(err, "evaluate")


def test_serve_and_infer(tmp_path: Path, capsys) -> None:
    code, err = run(["serve", "--model-repository", str(tmp_path / "none")], capsys)
    assert code == EXIT_USAGE and "--model-repository" in one_line(err, "serve")
    assert run(["infer", "--input", "x.csv"], capsys)[0] == EXIT_USAGE  # --model is required
    code, err = run(["infer", "--model", "m", "--input", str(tmp_path / "x.csv")], capsys)
    assert code == EXIT_FAILED and "x.csv does not exist" in one_line(err, "infer")


def test_demo(capsys) -> None:
    assert run(["demo", "--epochs", "x"], capsys)[0] == EXIT_USAGE


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
        (OSError(28, "No space left on device", "/full/m.onnx"), EXIT_FAILED),
    ],
)
def test_interrupts_and_os_errors(monkeypatch, capsys, raised: BaseException, code: int) -> None:
    _handlers_raise(monkeypatch, raised)
    got, err = run(["demo"], capsys)
    assert got == code and one_line(err, "demo")
    if isinstance(raised, OSError):
        assert "/full/m.onnx: No space left on device" in err


def test_bnmodel_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys) -> None:
    from bnmodel.train import TrainingDivergedError

    _handlers_raise(monkeypatch, TrainingDivergedError("epoch 3: the training loss is nan"))
    code, err = run(["demo"], capsys)
    assert code == EXIT_FAILED and "loss is nan" in one_line(err, "demo")
    _handlers_raise(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["demo"])


def _handlers_raise(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise exc

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(handler=handler)
