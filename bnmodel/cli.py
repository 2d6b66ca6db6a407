"""The ``bnmodel`` command: one subcommand per stage, each a thin layer over a library function.

Each stage registers its subcommands from a module that imports nothing heavy at import time, so
``bnmodel serve`` never imports torch and ``bnmodel --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bnmodel import __version__
from bnmodel.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError

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
    """Run one subcommand; its exit code follows the convention in ``bnmodel.errors``.

    Handlers return an exit code or raise: a UsageError is 2; the errors bnmodel raises on
    purpose (ValueError, OSError and bnmodel's own exception classes) are one line on stderr
    and 1; anything else is a bug and keeps its traceback.
    """
    args = build_parser().parse_args(argv)  # argparse reports its own usage errors: exit 2
    try:
        # Each subcommand's register() sets handler: parsed args -> exit code.
        return int(args.handler(args) or EXIT_OK)
    except UsageError as exc:
        return _fail(args.command, exc, EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail(args.command, "interrupted", EXIT_INTERRUPTED)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        message = (
            f"needs the training extra (module {exc.name!r} is not installed): "
            "pip install 'bnmodel[train]'"
        )
        return _fail(args.command, message, EXIT_USAGE)
    except OSError as exc:  # an unreadable input or unwritable output: which path, why
        if exc.filename is None:
            return _fail(args.command, exc, EXIT_FAILED)
        return _fail(args.command, f"{exc.filename}: {exc.strerror or exc}", EXIT_FAILED)
    except Exception as exc:
        if isinstance(exc, ValueError) or type(exc).__module__.startswith("bnmodel."):
            return _fail(args.command, exc, EXIT_FAILED)
        raise


def _fail(command: str, message: object, code: int) -> int:
    print(f"bnmodel {command}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
