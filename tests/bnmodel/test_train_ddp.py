"""torchrun with 2 CPU processes (gloo): DDP trains, shards the data, and only rank 0 writes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnmodel.checkpoint import load_checkpoint


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    # synthetic:400 -> 320 training rows -> 160 per rank -> 10 steps of 16 per epoch.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "bnmodel",
        "train",
        "--data",
        "synthetic:400,8,3",
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("best val_loss") == 1  # one report, from rank 0
    assert proc.stdout.count("task: classification") == 1  # one data summary
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "data.json",
        "last.pt",
        "metrics.csv",
        "metrics.png",
    ]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.epoch == 2 and not any(k.startswith("module.") for k in ckpt.model_state)


def test_sync_bn_refused_on_cpu_from_the_cli(tmp_path: Path) -> None:
    from bnmodel.cli import main

    assert main(["train", "--sync-bn", "--device", "cpu", "--out", str(tmp_path)]) == 2
