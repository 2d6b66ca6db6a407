"""``bnmodel export``: parse, call ``export_checkpoint``, print. Imports nothing heavy until run."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="fold batch norm into the weights and write ONNX (and a model repository)",
        description="Load a training checkpoint, fold every BatchNorm and the input "
        "standardization into the Linear layers, verify the folded model against the original "
        "(PyTorch and ONNX Runtime), then write ONNX. Fails with exit code 1 on any mismatch.",
    )
    parser.add_argument("checkpoint", help="training checkpoint file (bnmodel train output)")
    parser.add_argument("-o", "--output", metavar="OUT", help="write the ONNX model to OUT")
    parser.add_argument(
        "--repository",
        metavar="DIR",
        help="write DIR/NAME/config.pbtxt and DIR/NAME/VERSION/model.onnx",
    )
    parser.add_argument(
        "--name", help="model name in the repository (default: checkpoint file name without suffix)"
    )
    parser.add_argument(
        "--version", type=int, default=1, help="repository version folder (default: 1)"
    )
    parser.add_argument(
        "--no-fold",
        action="store_true",
        help="write the unfolded reference graph (with BatchNormalization nodes)",
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="half-precision weights, input and outputs (own tolerance)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=1024,
        help="max_batch_size in config.pbtxt (default: 1024)",
    )
    parser.add_argument(
        "--opset", type=int, default=None, help="ONNX opset to pin (default: 20; 13 to 23)"
    )
    parser.add_argument(
        "--verify-only",
        action="store_true",
        help="only print the equivalence report; write nothing",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the equivalence report (not recommended)"
    )
    parser.set_defaults(handler=_run)


def _usage_error(args: argparse.Namespace) -> str | None:
    writes = args.output is not None or args.repository is not None
    if args.verify_only and (writes or args.no_verify):
        return "--verify-only writes nothing and only verifies: drop -o/--repository/--no-verify"
    if not args.verify_only and not writes:
        return "say where to write: -o OUT and/or --repository DIR (or use --verify-only)"
    if args.repository is None and args.name is not None:
        return "--name needs --repository"
    return None


def _run(args: argparse.Namespace) -> int:
    problem = _usage_error(args)
    if problem:
        print(f"bnmodel export: error: {problem}", file=sys.stderr)
        return 2
    from bnmodel.export.api import export_checkpoint
    from bnmodel.export.onnx_export import DEFAULT_OPSET

    opset = DEFAULT_OPSET if args.opset is None else args.opset
    try:
        result = export_checkpoint(
            args.checkpoint,
            output=args.output,
            repository=args.repository,
            name=args.name,
            version=args.version,
            fold=not args.no_fold,
            fp16=args.fp16,
            max_batch_size=args.max_batch_size,
            opset=opset,
            verify=not args.no_verify,
        )
    except ValueError as exc:  # every caller error (checkpoint, fold, export, mismatch)
        report = getattr(exc, "report", None)
        if report is not None:
            print(report)
        print(f"bnmodel export: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an unwritable destination: say which path, no traceback
        message = f"cannot write {exc.filename}: {exc.strerror}"
        print(f"bnmodel export: error: {message}", file=sys.stderr)
        return 1
    print(result)
    return 0
