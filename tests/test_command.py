"""The top-level command: subcommands listed, a serving-only install told what to add."""

from __future__ import annotations

import argparse

import pytest

from bnmodel import cli


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "compare-bn", "export", "serve", "infer", "demo"):
        assert command in out


def test_missing_training_extra_names_the_module_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(handler=handler)
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "'torch'" in err and "bnmodel[train]" in err


def test_other_missing_modules_are_not_disguised(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError("No module named 'nonexistent'", name="nonexistent")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(handler=handler)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["demo"])
