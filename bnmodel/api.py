"""``bnmodel.load``: one call from a model's name to a predictor.

    model = bnmodel.load("runs/train/best.pt")          # a checkpoint (needs bnmodel[train])
    model = bnmodel.load("model.onnx")                  # an ONNX file (the base install)
    model = bnmodel.load("models/wine")                 # a repository model folder
    model = bnmodel.load("grpc://127.0.0.1:8001/wine")  # a model on a running server
    model.predict(frame)                                # a DataFrame, as bnmodel predict heads it

Every predictor has ``predict``, ``predict_proba`` and ``outputs``; a local one runs the graph
on ONNX Runtime, a remote one sends the same inputs to ``bnmodel serve`` (or Triton).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["REMOTE_SCHEMES", "load"]

REMOTE_SCHEMES = ("grpc://", "http://", "https://")


def load(spec: str | os.PathLike[str], **options: Any) -> Any:
    """A predictor for ``spec``: a path (checkpoint, ONNX file, repository model folder) gives
    a ``bnmodel.predict.LocalModel``; a URL ``grpc://HOST:PORT/MODEL`` or
    ``http(s)://HOST:PORT/MODEL`` a ``bnmodel.remote.RemoteModel`` (``options`` go to it:
    timeout, TLS, token)."""
    text = os.fspath(spec)
    if text.lower().startswith(REMOTE_SCHEMES):
        from bnmodel.remote import RemoteModel

        return RemoteModel(text, **options)
    if options:
        raise TypeError(f"bnmodel.load({text!r}): options {sorted(options)} are for URLs only")
    from bnmodel.predict import load_model

    return load_model(text)
