"""bnmodel: batch-normalized MLPs, trained fast, exported with BN folded, served over KServe v2.

This package is imported by the server too (``bnmodel.serve``), so nothing here may import torch
or pandas: the Python API below loads on first use.

    from bnmodel import BNMLPClassifier, BNMLPRegressor   # scikit-learn estimators (bnmodel[train])
    model = bnmodel.load("model.onnx")                    # or a checkpoint, folder, grpc:// URL
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["BNMLPClassifier", "BNMLPRegressor", "__version__", "load"]

# Public name -> the module defining it, imported when the name is first used.
_LAZY = {
    "BNMLPClassifier": "bnmodel.estimator",
    "BNMLPRegressor": "bnmodel.estimator",
    "load": "bnmodel.api",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'bnmodel' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
