"""The documentation stays true: its runnable blocks run, its links resolve, its CLI pages match
the parser, and the site builds.

A fenced block preceded by the line ``<!-- runnable -->`` is runnable (docs/contributing.md).
README.md's blocks run first, in order, in one temporary folder; each page in docs/ then runs its
blocks in order in its own copy of that folder, so a page may use the README walk's files
(wine_train.csv, runs/wine, models/). Shell blocks run in bash with ``-euo pipefail``; Python
blocks run with this interpreter. The ports the docs name (8000 HTTP, 8001 gRPC, 8002 metrics)
are swapped for free ones, and every process a block leaves behind is killed with its process
group.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MARKER = "<!-- runnable -->"
PAGES = sorted(DOCS.glob("*.md"))
BLOCK_TIMEOUT_S = 180
# The ports the docs use, as a user's defaults; each run gets free ones in their place.
DOC_PORTS = ("8000", "8001", "8002")
FENCE_OPEN = re.compile(r"^(`{3,})\s*([^`]*?)\s*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    text: str


class MarkerError(ValueError):
    """A runnable marker not followed by a fenced block, or on a block that cannot run."""


def runnable_blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path`` whose opening fence follows a MARKER line (blank lines
    between them allowed), in page order. Fences nest as in CommonMark: a block closes at a
    fence of at least its own length, so an example of the marker inside a block is text."""
    blocks: list[Block] = []
    fence, language, marked, start, body = "", "", 0, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if fence:  # inside a block
            if line.strip().startswith(fence) and not line.strip().strip("`"):
                if marked:
                    blocks.append(Block(path.name, start, language, "\n".join(body) + "\n"))
                fence, marked, body = "", 0, []
            else:
                body.append(line)
            continue
        opening = FENCE_OPEN.match(line)
        if opening:
            fence, start = opening.group(1), number
            language = opening.group(2).split(" ")[0] or "bash"
            if marked and language not in ("bash", "sh", "python"):
                raise MarkerError(f"{path.name}:{number}: a runnable block is bash or python")
        elif line.strip() == MARKER:
            marked = number
        elif line.strip() and marked:
            raise MarkerError(f"{path.name}:{marked}: {MARKER} must be followed by a block")
    if marked and not fence:
        raise MarkerError(f"{path.name}:{marked}: {MARKER} must be followed by a block")
    return blocks


def test_every_marker_marks_a_block() -> None:
    # A marker with no block after it would silently run nothing.
    for path in [ROOT / "README.md", *PAGES]:
        runnable_blocks(path)
    assert runnable_blocks(ROOT / "README.md"), "README.md's walk must be runnable"


def _free_ports(count: int) -> list[str]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [str(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _with_free_ports(text: str) -> str:
    ports = dict(zip(DOC_PORTS, _free_ports(len(DOC_PORTS)), strict=True))
    text = re.sub(r"\b(800[0-2])\b", lambda m: ports[m.group(1)], text)
    # A `bnmodel serve` relying on the default ports gets them spelled out (its own flags,
    # later on the line, still win).
    return text.replace(
        "bnmodel serve ", f"bnmodel serve --port {ports['8001']} --http-port {ports['8000']} "
    )


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    # The interpreter running the tests is the venv's: its bin/ holds bnmodel and python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env["MPLBACKEND"] = "Agg"
    return env


def run_block(block: Block, workdir: Path) -> None:
    script = workdir / f".block-{block.page}-{block.line}"
    script.write_text(_with_free_ports(block.text))
    if block.language == "python":
        command = [sys.executable, str(script)]
    else:
        command = ["bash", "-euo", "pipefail", str(script)]
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: servers it started die with it
    )
    try:
        out, _ = process.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"{block.page}:{block.line}: block ran past {BLOCK_TIMEOUT_S} s\n{out}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        script.unlink(missing_ok=True)
    assert process.returncode == 0, (
        f"{block.page}:{block.line}: {block.language} block exited {process.returncode}\n"
        f"--- block ---\n{block.text}--- output ---\n{out[-6000:]}"
    )


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where README.md's runnable blocks all ran, in order."""
    folder = tmp_path_factory.mktemp("readme")
    for block in runnable_blocks(ROOT / "README.md"):
        run_block(block, folder)
    return folder


@pytest.mark.slow
def test_readme_walk_runs(readme_folder: Path) -> None:
    # The walk ends with predictions from the local model and from the served one.
    for name in ("predictions.csv", "served.csv"):
        rows = (readme_folder / name).read_text().splitlines()
        assert rows[0].split(",")[0].strip('"') == "cultivar" and len(rows) > 10, name


@pytest.mark.slow
@pytest.mark.parametrize("page", [p.name for p in PAGES if runnable_blocks(p)])
def test_page_blocks_run(page: str, readme_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "walk"
    shutil.copytree(readme_folder, folder)
    for block in runnable_blocks(DOCS / page):
        run_block(block, folder)


def test_relative_links_resolve() -> None:
    for path in [ROOT / "README.md", *PAGES, *sorted((DOCS / "cli").glob("*.md"))]:
        for target in LINK.findall(path.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            resolved = (path.parent / target.split("#")[0]).resolve()
            assert resolved.exists(), f"{path.relative_to(ROOT)}: link to {target} is broken"


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_pages_match_the_parser() -> None:
    gen_cli = _gen_cli()
    if sys.version_info[:2] != gen_cli.PYTHON:
        pytest.skip(f"docs/cli/ is rendered with Python {gen_cli.PYTHON}'s argparse layout")
    stale = gen_cli.stale_pages(gen_cli.render_pages())
    assert not stale, f"docs/cli/ is stale ({', '.join(stale)}): run {gen_cli.REGENERATE}"


def test_site_builds_strictly(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs, "mkdocs is missing: pip install -e '.[test]'"
    completed = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").is_file()


def test_stale_cli_pages_are_named(tmp_path: Path) -> None:
    gen_cli = _gen_cli()
    pages = {"train.md": "fresh\n", "serve.md": "fresh\n"}
    (tmp_path / "train.md").write_text("fresh\n")
    (tmp_path / "serve.md").write_text("edited by hand\n")
    (tmp_path / "gone.md").write_text("a subcommand that no longer exists\n")
    assert gen_cli.stale_pages(pages, tmp_path) == ["gone.md", "serve.md"]


def test_marker_parsing(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- runnable -->\n\n```bash\necho one\n```\n\n```bash\necho shown only\n```\n"
        "````markdown\n<!-- runnable -->\n\n```bash\necho an example\n```\n````\n"
        "<!-- runnable -->\n```python\nprint('two')\n```\n"
    )
    blocks = runnable_blocks(page)
    assert [(b.line, b.language, b.text) for b in blocks] == [
        (3, "bash", "echo one\n"),
        (18, "python", "print('two')\n"),
    ]
    page.write_text("<!-- runnable -->\nSome prose.\n\n```bash\necho one\n```\n")
    with pytest.raises(MarkerError, match="page.md:1"):
        runnable_blocks(page)
    page.write_text("<!-- runnable -->\n\n```text\nnot a program\n```\n")
    with pytest.raises(MarkerError, match="bash or python"):
        runnable_blocks(page)
