"""The BN-vs-no-BN reproduction: table arithmetic and a tiny end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnmodel.compare_bn import compare_bn, format_table, steps_to


def test_steps_to() -> None:
    curve = [(24, 0.5), (48, 0.91), (72, 0.89), (96, 0.96)]
    assert steps_to(curve, 0.90) == 48 and steps_to(curve, 0.95) == 96
    assert steps_to(curve, 0.99) is None


def test_tiny_comparison_writes_plot_and_table(tmp_path: Path) -> None:
    lines: list[str] = []
    report = compare_bn(tmp_path, seeds=(0, 1), epochs=1, log=lines.append)
    assert len(lines) == 4 and lines[0].startswith("[1/4] with BN, seed 0: final val accuracy")
    assert report.plot.read_bytes()[:4] == b"\x89PNG"
    assert report.table.read_text().startswith("model,seed,final_val_accuracy")
    assert [r["seed"] for r in report.rows] == [0, 1, "mean"] * 2
    assert {r["model"] for r in report.rows} == {"with BN", "without BN"}
    assert all(len(c) == 1 and c[0][0] == 24 for cs in report.curves.values() for c in cs)
    table = format_table(report.rows)
    assert "with BN" in table and "without BN" in table and "steps to 95%" in table


def test_an_earlier_comparison_is_kept_unless_overwrite(tmp_path: Path) -> None:
    compare_bn(tmp_path, seeds=(0,), epochs=1)
    with pytest.raises(ValueError, match="holds an earlier comparison"):
        compare_bn(tmp_path, seeds=(0,), epochs=1)
    assert compare_bn(tmp_path, seeds=(0,), epochs=1, overwrite=True).table.is_file()
