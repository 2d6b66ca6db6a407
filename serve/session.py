"""ONNX Runtime session creation: execution providers by device, threads suited to the machine.

``--device auto`` asks for CUDA when this onnxruntime build has it and keeps it only if a created
session really uses it (``get_providers()``); otherwise CPU, said once in the log. ONNX Runtime's
own log stays quiet (provider and load failures are reported by us, once, in plain words).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from .errors import ModelLoadError
from .settings import DEVICES, cpu_count

__all__ = [
    "DEVICES",
    "ThreadSettings",
    "default_threads",
    "SessionFactory",
    "OnnxSignature",
    "session_signature",
    "inspect_onnx",
]

log = logging.getLogger("bnmodel.serve")

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
# ORT severities: 0 verbose .. 3 error, 4 fatal. Provider-library and model-load failures are
# logged by ORT at error level before Python sees the exception; we report them ourselves.
_ORT_QUIET = 4


@dataclass(frozen=True)
class ThreadSettings:
    """Threads per ORT run (intra-op) and concurrent runs (executor workers)."""

    intra_op: int
    workers: int


def default_threads(intra_op: int = 0, workers: int = 0, processes: int = 1) -> ThreadSettings:
    """Fill 0s with values suited to the machine and to this process's share of it.

    A small MLP at small batches gains nothing from several intra-op threads, and their spinning
    steals the CPU that gRPC needs, so each run gets about half of this process's share of the
    cores (``processes`` server processes split them, serve/workers.py; at most 4). Runs in
    flight are not divided: one connection keeps one process busy while the others idle, and
    that process may then use every core.
    """
    cores = cpu_count()
    share = max(1, cores // max(1, processes))
    return ThreadSettings(
        intra_op=intra_op or max(1, min(4, share // 2)),
        workers=workers or max(1, cores),
    )


class SessionFactory:
    """Creates InferenceSessions for one device choice; remembers whether CUDA really works."""

    def __init__(self, device: str = "auto", intra_op_threads: int = 1) -> None:
        if device not in DEVICES:
            raise ValueError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
        self.device = device
        self.intra_op_threads = intra_op_threads
        self._cuda_usable = device != "cpu" and _CUDA in ort.get_available_providers()
        self._fallback_logged = False
        ort.set_default_logger_severity(_ORT_QUIET)
        if device == "cuda" and not self._cuda_usable:
            raise ModelLoadError(
                "--device cuda: this onnxruntime build has no CUDA execution provider "
                f"(available: {', '.join(ort.get_available_providers())})"
            )

    def _options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.log_severity_level = _ORT_QUIET
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would compete with the event loop for the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def create(self, path: Path) -> ort.InferenceSession:
        """A session for ``path``; ModelLoadError (without ORT's dump) when it cannot load."""
        try:
            session = ort.InferenceSession(str(path), self._options(), providers=self.providers)
        except Exception as exc:  # ORT raises several pybind exception types for bad files
            text = str(exc).strip()
            raise ModelLoadError(
                f"{path.name} could not be loaded by ONNX Runtime (not a valid ONNX model, "
                "or it uses operators this runtime lacks)",
                detail=text.splitlines()[0][:300] if text else type(exc).__name__,
            ) from None
        if self._cuda_usable and _CUDA not in session.get_providers():
            self._cuda_unavailable()
        return session

    def _cuda_unavailable(self) -> None:
        if self.device == "cuda":
            raise ModelLoadError(
                "--device cuda: the CUDA execution provider could not be created "
                "(no GPU, or CUDA/cuDNN libraries missing); use --device auto or cpu"
            )
        self._cuda_usable = False
        if not self._fallback_logged:
            self._fallback_logged = True
            log.info(
                "CUDA execution provider unavailable here; running on CPU", extra={"once": True}
            )

    @property
    def providers(self) -> list[str]:
        """The providers sessions are created with now."""
        return [_CUDA, _CPU] if self._cuda_usable else [_CPU]


@dataclass(frozen=True)
class OnnxSignature:
    """A graph's tensors as (name, ORT type, shape) with symbolic dims as None, plus metadata."""

    inputs: tuple[tuple[str, str, tuple[int | None, ...]], ...]
    outputs: tuple[tuple[str, str, tuple[int | None, ...]], ...]
    metadata: dict[str, str]


def _args(node_args) -> tuple[tuple[str, str, tuple[int | None, ...]], ...]:
    return tuple(
        (a.name, a.type, tuple(d if isinstance(d, int) else None for d in a.shape))
        for a in node_args
    )


def session_signature(session: ort.InferenceSession) -> OnnxSignature:
    """The tensors and custom metadata of a created session."""
    return OnnxSignature(
        inputs=_args(session.get_inputs()),
        outputs=_args(session.get_outputs()),
        metadata=dict(session.get_modelmeta().custom_metadata_map),
    )


def inspect_onnx(path: Path) -> OnnxSignature:
    """Read an ONNX file's signature with a throwaway single-thread CPU session."""
    return session_signature(SessionFactory("cpu", 1).create(path))
