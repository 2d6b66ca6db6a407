"""The README's Python section, run as written (tests/docs_snippets/python_api.py)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

SNIPPET = Path(__file__).parent / "docs_snippets" / "python_api.py"


def test_python_section_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # it writes wine.onnx and models/ where it runs
    try:
        runpy.run_path(str(SNIPPET), run_name="__main__")
    finally:
        out = capsys.readouterr().out
        assert "test accuracy" in out and "result: equivalent within tolerance" in out
        assert "cultivar" in out and (tmp_path / "models" / "wine" / "config.pbtxt").is_file()


def test_readme_shows_the_snippet_verbatim() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"```python\n{SNIPPET.read_text()}```" in readme
