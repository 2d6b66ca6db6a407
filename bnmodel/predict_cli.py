"""``bnmodel predict`` and ``bnmodel evaluate``: a model and a file, no server.

Imports nothing heavy at module level; an ONNX model needs neither torch nor the train extra
for predict (evaluate draws with matplotlib and scores with scikit-learn: bnmodel[train]).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["register"]

MODEL_HELP = "a checkpoint (.pt, needs bnmodel[train]), an ONNX file, or a repository model folder"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown for optional flags; a required one has none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.required else super()._get_help_string(action)


def register(subparsers: argparse._SubParsersAction) -> None:
    from bnmodel.predict import CHUNK_ROWS

    predict = subparsers.add_parser(
        "predict",
        help="predict a file of rows locally (ONNX Runtime, no server)",
        description="Run MODEL on every row of --input and write --output: the predicted "
        "class and one probability column per class (p_LABEL), or the predicted values. "
        "Feature columns are picked by name; the target and other columns are ignored.",
        formatter_class=_HelpFormatter,
    )
    predict.add_argument("model", help=MODEL_HELP)
    predict.add_argument(
        "--input",
        required=True,
        type=Path,
        help="rows: .csv, .tsv or .txt (comma, tab, semicolon or pipe; optionally .gz or .zst "
        "compressed), .parquet, .npz, .npy",
    )
    predict.add_argument("--output", required=True, type=Path, help="predictions: .csv or .parquet")
    predict.add_argument(
        "--chunk-rows",
        type=_positive,
        default=CHUNK_ROWS,
        help="rows per ONNX Runtime call and write",
    )
    predict.set_defaults(handler=_predict)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="score a model on a labelled file (accuracy, F1, log loss / RMSE, MAE, R^2)",
        description="Run MODEL on --data and compare with its target column: accuracy, "
        "macro-F1, log loss and a confusion matrix for a classifier; RMSE, MAE and R^2 and a "
        "predicted-against-true plot for a regressor.",
        formatter_class=_HelpFormatter,
    )
    evaluate.add_argument("model", help=MODEL_HELP)
    evaluate.add_argument(
        "--data", required=True, type=Path, help="a table as for predict --input, or .npz"
    )
    evaluate.add_argument(
        "--target",
        default=None,
        help="target column (None: the model's training target, else 'target')",
    )
    evaluate.add_argument(
        "--plot",
        type=Path,
        default=Path("evaluation.png"),
        help="confusion matrix or predicted-against-true PNG",
    )
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")
    evaluate.add_argument(
        "--chunk-rows", type=_positive, default=CHUNK_ROWS, help="rows per ONNX Runtime call"
    )
    evaluate.set_defaults(handler=_evaluate)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# Errors are raised to bnmodel.cli.main, which maps them to exit codes.


def _predict(args: argparse.Namespace) -> int:
    from bnmodel.predict import predict_file

    summary = predict_file(args.model, args.input, args.output, chunk_rows=args.chunk_rows)
    for line in summary.warnings:  # categorical text the model never saw
        print(f"bnmodel predict: warning: {line}", file=sys.stderr)
    print(
        f"wrote {summary.rows} rows to {summary.output} ({', '.join(summary.columns[:6])}"
        f"{', ...' if len(summary.columns) > 6 else ''}) in {summary.seconds:.2f} s"
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from bnmodel.evaluate import evaluate_file

    result = evaluate_file(
        args.model, args.data, target=args.target, plot=args.plot, chunk_rows=args.chunk_rows
    )
    for line in result.warnings:
        print(f"bnmodel evaluate: warning: {line}", file=sys.stderr)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0
