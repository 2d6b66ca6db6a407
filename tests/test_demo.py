"""The demo end to end: trained PyTorch model, folded ONNX, real server process, gRPC client."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_serves_the_trained_model_with_pytorchs_answers(tmp_path):
    # Few epochs keep CI fast; the comparison holds for any trained model.
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnmodel",
            "demo",
            "--workdir",
            str(tmp_path),
            "--epochs",
            "3",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = completed.stdout
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "result: equivalent within tolerance" in out
    assert re.search(r"ready on 127\.0\.0\.1:\d+", out)
    torch_acc = float(re.search(r"PyTorch accuracy\s+([\d.]+)", out).group(1))
    served_acc = float(re.search(r"served accuracy\s+([\d.]+)", out).group(1))
    assert served_acc == torch_acc
    assert served_acc > 0.9  # three epochs of BN training on digits already get there
    assert float(re.search(r"same class\s+([\d.]+)", out).group(1)) == 1.0
    assert float(re.search(r"max \|p_served - p_torch\|\s+(\S+)", out).group(1)) < 1e-5
    assert (tmp_path / "models" / "digits" / "config.pbtxt").is_file()
    assert (tmp_path / "models" / "digits" / "1" / "model.onnx").is_file()
