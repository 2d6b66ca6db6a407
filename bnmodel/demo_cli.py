"""``bnmodel demo``: parse flags, run the pipeline demo, report."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train on digits, export folded ONNX, serve it, classify held-out rows over gRPC",
        description="The whole pipeline on the embedded digits data: train -> export (folded, "
        "verified) -> serve on a free local port -> classify the held-out rows through the "
        "client -> compare with PyTorch -> stop the server.",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs/demo"),
        help="where checkpoints and the model repository go (default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from bnmodel.demo import run_demo

    result = run_demo(args.workdir, epochs=args.epochs, progress=not args.no_progress)
    # The served model must classify like the PyTorch one; anything else is a failed demo.
    return 0 if result.agreement == 1.0 else 1
