"""``bnmodel export``: parse, call ``export_checkpoint``, print. Imports nothing heavy until run."""

from __future__ import annotations

import argparse

from bnmodel.errors import UsageError

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
        "--int8",
        action="store_true",
        help="statically quantize the folded graph to INT8 (per-channel weights), refused when "
        "validation accuracy drops by more than --max-accuracy-drop",
    )
    parser.add_argument(
        "--calibration-data",
        metavar="FILE",
        help="INT8 calibration rows: .csv/.parquet with the model's feature columns, or .npz "
        "with X (default: the checkpoint's training rows)",
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=None,
        metavar="POINTS",
        help="INT8: largest accepted accuracy loss, in percentage points (default: 0.5)",
    )
    parser.add_argument(
        "--max-rmse-increase",
        type=float,
        default=None,
        metavar="PERCENT",
        help="INT8 regressor: largest accepted RMSE increase, in percent of fp32's (default: 1)",
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
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print every comparison of the equivalence report (always in the JSON beside "
        "the model)",
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
    int8_only = ("--calibration-data", "--max-accuracy-drop", "--max-rmse-increase")
    for flag in int8_only:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and not args.int8:
            return f"{flag} needs --int8"
        if flag != "--calibration-data" and value is not None and value < 0:
            return f"{flag} must be >= 0, got {value:g}"
    return None  # export_checkpoint refuses --int8 with --fp16 or --no-fold


def _run(args: argparse.Namespace) -> int:
    """Errors are raised to bnmodel.cli.main, which maps them to exit codes."""
    problem = _usage_error(args)
    if problem:
        raise UsageError(problem)
    from bnmodel.export.api import export_checkpoint
    from bnmodel.export.int8 import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_MAX_RMSE_INCREASE
    from bnmodel.export.onnx_export import DEFAULT_OPSET

    opset = DEFAULT_OPSET if args.opset is None else args.opset
    drop, rmse = args.max_accuracy_drop, args.max_rmse_increase
    try:
        result = export_checkpoint(
            args.checkpoint,
            output=args.output,
            repository=args.repository,
            name=args.name,
            version=args.version,
            fold=not args.no_fold,
            fp16=args.fp16,
            int8=args.int8,
            calibration_data=args.calibration_data,
            max_accuracy_drop=DEFAULT_MAX_ACCURACY_DROP if drop is None else drop,
            max_rmse_increase=DEFAULT_MAX_RMSE_INCREASE if rmse is None else rmse,
            max_batch_size=args.max_batch_size,
            opset=opset,
            verify=not args.no_verify,
        )
    except ValueError as exc:  # a mismatch carries its report: the failing comparisons in full
        report = getattr(exc, "report", None)
        if report is not None:
            print(report.format(verbose=True))
        raise
    print(result.format(verbose=args.verbose))
    return 0
