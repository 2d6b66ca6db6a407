"""``bnmodel export``: flags reach export_checkpoint, errors become exit codes and messages."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnmodel.cli import main


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--output",
        "--repository",
        "--name",
        "--version",
        "--no-fold",
        "--fp16",
        "--max-batch-size",
        "--opset",
        "--verify-only",
        "--verbose",
        "--int8",
        "--calibration-data",
        "--max-accuracy-drop",
        "--max-rmse-increase",
    ):
        assert flag in out


def test_export_to_file_and_repository(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "export",
            str(checkpoint_path),
            "-o",
            str(tmp_path / "m.onnx"),
            "--repository",
            str(tmp_path / "repo"),
            "--name",
            "demo",
            "--version",
            "2",
        ]
    )
    assert code == 0
    assert (tmp_path / "m.onnx").is_file()
    assert (tmp_path / "repo" / "demo" / "2" / "model.onnx").is_file()
    assert "equivalent within tolerance" in capsys.readouterr().out


def test_verify_only_prints_the_report(
    checkpoint_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(checkpoint_path), "--verify-only"]) == 0
    out = capsys.readouterr().out
    assert "ONNX Runtime unfolded, graph opt on" in out and "wrote" not in out


def test_missing_checkpoint_exits_1_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent.pt"
    assert main(["export", str(missing), "-o", str(tmp_path / "m.onnx")]) == 1
    assert str(missing) in capsys.readouterr().err


def test_unwritable_destination_exits_1_naming_the_path(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["export", str(checkpoint_path), "-o", str(blocker / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert str(blocker) in err and "Traceback" not in err


def test_no_destination_is_a_usage_error(
    checkpoint_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(checkpoint_path)]) == 2
    assert "--verify-only" in capsys.readouterr().err


def test_cli_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, bnmodel.export.cli; "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_saturated_units_export_and_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Post placement, tanh units pinned at +-1 (running_var ~0): exports within 1e-5."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from export_testlib import adversarial_model

    from bnmodel.checkpoint import Checkpoint, save_checkpoint

    model, _ = adversarial_model(
        in_features=6,
        hidden_sizes=(32, 32),
        out_features=4,
        activation="tanh",
        bn_placement="post",
        standardize_input=True,
        bn_eps=1e-5,
        cumulative=True,
        affine=True,
        states=["saturated", "normal", "normal"],
        mean_scale=1.0,
        log10_min_var=None,
        seed=5,
    )
    ckpt = Checkpoint(model.config, model.state_dict(), "classification", list("abcdef"))
    path = save_checkpoint(ckpt, tmp_path / "saturated.pt")
    assert main(["export", str(path), "-o", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "centering kept as a Sub" in out and "equivalent within tolerance" in out


def _assert_full_disk_export_leaves_nothing(checkpoint_path: Path, repo: Path, capsys) -> None:
    code = main(["export", str(checkpoint_path), "--repository", str(repo), "--name", "demo"])
    err = capsys.readouterr().err
    assert code == 1
    # The file that did not fit: the model, or the config after it.
    assert f"error: {repo / 'demo'}{os.sep}" in err and "No space left on device" in err, err
    left = sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) if repo.exists() else []
    assert left == [], left  # no model, no version folder, no config, no temp file


def test_export_into_a_full_disk_names_the_path_and_leaves_nothing(
    checkpoint_path: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from bnmodel import files

    class FullDisk:  # a write that fails as on a full disk (ENOSPC names no file)
        def __init__(self, fd: int, *args, **kwargs) -> None:
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "open", FullDisk, raising=False)
    _assert_full_disk_export_leaves_nothing(checkpoint_path, tmp_path / "repo", capsys)


def test_export_into_a_real_full_filesystem(checkpoint_path: Path, tmp_path: Path, capsys) -> None:
    # A 16 KiB tmpfs: model and config do not both fit. Needs mount rights (root): skipped
    # without them.
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        _assert_full_disk_export_leaves_nothing(checkpoint_path, mount / "repo", capsys)
    finally:
        subprocess.run(["umount", str(mount)], check=True)
