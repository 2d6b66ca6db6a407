"""The ``bnmodel`` command: one subcommand per stage, each a thin layer over a library function.

Each stage registers its subcommands from a module that imports nothing heavy at import time, so
``bnmodel serve`` never imports torch and ``bnmodel --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bnmodel import __version__

__all__ = ["build_parser", "main"]

# What `pip install bnmodel[train]` adds; a serving-only install lacks these.
TRAIN_EXTRA_MODULES = frozenset({"torch", "onnx", "sklearn", "pandas", "matplotlib", "tqdm"})


def build_parser() -> argparse.ArgumentParser:
    from bnmodel import demo_cli, predict_cli, train_cli
    from bnmodel.export import cli as export_cli
    from bnmodel.serve import cli as serve_cli

    parser = argparse.ArgumentParser(
        prog="bnmodel",
        description="Train batch-normalized MLPs, export them folded to ONNX, serve them over "
        "the Open Inference Protocol (KServe v2 / Triton gRPC).",
    )
    parser.add_argument("--version", action="version", version=f"bnmodel {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in (train_cli, export_cli, predict_cli, serve_cli, demo_cli):
        stage.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Each subcommand's register() sets handler: parsed args -> exit code.
        return int(args.handler(args) or 0)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        print(
            f"bnmodel {args.command}: needs the training extra (module {exc.name!r} is not "
            "installed): pip install 'bnmodel[train]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
