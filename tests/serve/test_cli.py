"""`bnmodel serve` / `bnmodel infer` command lines."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from conftest import run_server
from models import FEATURE_NAMES, LABELS, mlp_model, write_model


def _bnmodel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bnmodel", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_the_flags():
    serve = _bnmodel("serve", "--help")
    assert serve.returncode == 0
    for flag in ("--model-repository", "--model", "--port", "--device", "--max-message-bytes"):
        assert flag in serve.stdout
    infer = _bnmodel("infer", "--help")
    assert infer.returncode == 0 and "--input" in infer.stdout and "--output" in infer.stdout


def test_serve_refuses_bad_flags_clearly(tmp_path):
    result = _bnmodel("serve", "--model-repository", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "--model-repository" in result.stderr and "no such folder" in result.stderr


def test_serve_does_not_import_heavy_packages():
    code = (
        "import sys; from bnmodel.cli import build_parser; from bnmodel.serve import server; "
        "print(sorted(m for m in ('torch', 'onnx', 'pandas') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_infer_prints_classes_and_probabilities(server, repository, tmp_path):
    rows = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    # CSV with a header in another column order, plus an extra column: matched by name.
    header = ["label", *reversed(FEATURE_NAMES)]
    table = np.column_stack([np.zeros(5), rows[:, ::-1]])
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text(
        ",".join(header) + "\n" + "\n".join(",".join(repr(float(v)) for v in r) for r in table)
    )
    result = _bnmodel("infer", "--url", server.url, "--model", "clf", "--input", str(csv_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "class," + ",".join(f"p_{label}" for label in LABELS)
    assert len(lines) == 6
    probabilities = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert [line.split(",")[0] for line in lines[1:]] == [
        LABELS[i] for i in probabilities.argmax(axis=1)
    ]
    np.save(tmp_path / "rows.npy", rows)
    out = tmp_path / "out.csv"
    npy = _bnmodel(
        "infer",
        "--url",
        server.url,
        "--model",
        "clf",
        "--input",
        str(tmp_path / "rows.npy"),
        "--output",
        str(out),
    )
    assert npy.returncode == 0 and "wrote 5 predictions" in npy.stdout
    assert out.read_text().splitlines() == lines  # same rows, same answers


def test_infer_regressor_and_errors(server, tmp_path):
    np.save(tmp_path / "rows.npy", np.ones((3, 8), np.float32))
    result = _bnmodel(
        "infer", "--url", server.url, "--model", "reg", "--input", str(tmp_path / "rows.npy")
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "predictions_0,predictions_1"
    missing = _bnmodel(
        "infer", "--url", server.url, "--model", "nope", "--input", str(tmp_path / "rows.npy")
    )
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_serve_one_onnx_file(tmp_path):
    path = write_model(tmp_path, "digits", mlp_model(), "")
    with run_server("--model", str(path), "--device", "cpu") as server:
        assert "models: digits" in server.ready_line
        np.save(tmp_path / "rows.npy", np.ones((2, 8), np.float32))
        result = _bnmodel(
            "infer", "--url", server.url, "--model", "digits", "--input", str(tmp_path / "rows.npy")
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("class,p_setosa")


def _one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_infer_errors_are_one_human_line(server, tmp_path):
    rows = tmp_path / "rows.npy"
    np.save(rows, np.ones((2, 8), np.float32))
    free = _one_line(
        _bnmodel("infer", "--url", "127.0.0.1:1", "--model", "clf", "--input", str(rows))
    )
    assert "no server answers at 127.0.0.1:1; is `bnmodel serve` running there" in free
    http = _one_line(
        _bnmodel("infer", "--url", f"http://{server.url}", "--model", "clf", "--input", str(rows))
    )
    assert "the answer is not HTTP/1.1; is this the gRPC port?" in http
    missing = _one_line(
        _bnmodel("infer", "--url", server.url, "--model", "clf", "--input", str(tmp_path / "x.csv"))
    )
    assert missing == f"bnmodel infer: error: input {tmp_path / 'x.csv'} does not exist"
    narrow = tmp_path / "narrow.csv"
    narrow.write_text("1,2,3\n4,5,6\n")
    columns = _one_line(
        _bnmodel("infer", "--url", server.url, "--model", "clf", "--input", str(narrow))
    )
    assert f"{narrow}: 3 columns, the model expects 8 (f0, f1, f2" in columns


def test_infer_takes_the_training_file_and_names_a_bad_cell(server, tmp_path):
    rows = np.random.default_rng(1).normal(size=(3, 8))
    header = [*FEATURE_NAMES, "species"]  # the training file's string target column
    body = [
        ",".join([*(repr(float(v)) for v in r), label])
        for r, label in zip(rows, LABELS, strict=True)
    ]
    train = tmp_path / "train.csv"
    train.write_text(",".join(header) + "\n" + "\n".join(body) + "\n")
    result = _bnmodel("infer", "--url", server.url, "--model", "clf", "--input", str(train))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 4
    # Data row 2 (line 3 of the file), column f2: blank is a missing value (NaN), text is refused.
    blank = body[1].replace(repr(float(rows[1, 2])), "", 1)
    train.write_text("\n".join([",".join(header), body[0], blank, body[2]]) + "\n")
    result = _bnmodel("infer", "--url", server.url, "--model", "clf", "--input", str(train))
    assert result.returncode == 0 and "NaN or inf for 1 row(s) (rows 2)" in result.stderr
    text = body[1].replace(repr(float(rows[1, 2])), "oops", 1)
    train.write_text("\n".join([",".join(header), body[0], text, body[2]]) + "\n")
    bad = _one_line(_bnmodel("infer", "--url", server.url, "--model", "clf", "--input", str(train)))
    assert (
        bad == f"bnmodel infer: error: input {train}: column 'f2', row 2 (line 3): "
        "'oops' is not a number"
    )


def test_infer_flags_nan_outputs_instead_of_a_class(server, tmp_path):
    rows = np.ones((3, 8), np.float32)
    rows[1, 0] = np.nan  # NaN in, NaN probabilities out
    np.save(tmp_path / "rows.npy", rows)
    result = _bnmodel(
        "infer", "--url", server.url, "--model", "clf", "--input", str(tmp_path / "rows.npy")
    )
    assert result.returncode == 0, result.stderr
    classes = [line.split(",")[0] for line in result.stdout.strip().splitlines()[1:]]
    assert classes[1] == "" and classes[0] in LABELS and classes[2] in LABELS
    assert "NaN or inf for 1 row(s) (rows 2)" in result.stderr
