"""The report a person reads: one line per comparison group, the table on request, JSON always."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bnmodel.export.api import export_checkpoint
from bnmodel.export.fold import fold_model
from export_testlib import make_checkpoint, make_model

from bnmodel.cli import main

CANDIDATES = 6  # PyTorch unfolded/folded, ONNX Runtime folded/unfolded x graph opt off/on


def _equivalence_lines(out: str) -> list[str]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("equivalence against"))
    return lines[start + 1 : start + 1 + CANDIDATES]


def test_default_report_is_one_line_per_candidate(
    checkpoint_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(checkpoint_path), "--verify-only"]) == 0
    out = capsys.readouterr().out
    lines = _equivalence_lines(out)
    assert [line.split()[0] for line in lines] == ["PyTorch"] * 2 + ["ONNX"] * 4
    for line in lines:  # a relative error next to a relative tolerance, agreement, verdict
        assert "worst relative error" in line and "(tolerance 1e-05)" in line
        assert "argmax agreement 100.00%" in line and line.endswith("pass")
    assert "max abs" not in out and "rel error" not in out
    assert len(out.splitlines()) < 20


def test_verbose_adds_the_full_table(
    checkpoint_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", str(checkpoint_path), "--verify-only", "--verbose"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.endswith((" yes", " NO"))]
    assert len(table) == CANDIDATES * 2  # x 2 outputs (random rows: no data_spec here)
    assert "rel error" in out and "tolerance" in out


def test_layers_are_named_as_the_user_knows_them() -> None:
    _, report = fold_model(make_model(bn_placement="post", hidden_sizes=(16, 8, 4)))
    summary = report.summary()
    assert summary[0].startswith("input standardization folded into Linear 1")
    assert summary[1].startswith("hidden layer 1 BN folded into Linear 2")
    assert summary[3].startswith("hidden layer 3 BN folded into Linear 4")
    assert not any("net." in line for line in summary)


def test_json_report_is_written_beside_the_model_and_in_the_repository(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "m.pt", bn_placement="post")
    result = export_checkpoint(
        ckpt, output=tmp_path / "out" / "clf.onnx", repository=tmp_path / "repo", name="clf"
    )
    beside = tmp_path / "out" / "clf.report.json"
    in_repo = tmp_path / "repo" / "clf" / "1" / "model.report.json"
    assert result.report_paths == [beside, in_repo]
    report = json.loads(beside.read_text())
    assert report == json.loads(in_repo.read_text())
    assert report["precision"] == "fp32" and report["equivalence"]["ok"] is True
    assert len(report["equivalence"]["summary"]) == CANDIDATES
    assert len(report["equivalence"]["comparisons"]) == CANDIDATES * 2
    described = [step["description"] for step in report["folding"]["folded"]]
    assert any(d.startswith("hidden layer 2 BN folded into Linear 3") for d in described)


def test_no_verify_still_writes_the_folding_report(checkpoint_path: Path, tmp_path: Path) -> None:
    export_checkpoint(checkpoint_path, output=tmp_path / "m.onnx", verify=False)
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert report["equivalence"] is None and report["folding"]["folded"]
