"""Fixtures for the export tests; the builders live in export_testlib."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from export_testlib import make_checkpoint


@pytest.fixture
def checkpoint_path(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "model.pt")


@pytest.fixture(autouse=True)
def _no_tf32() -> None:
    # Numerical comparisons: never let a backend trade float32 precision for speed.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
