"""``bnmodel train`` and ``bnmodel compare-bn``: parse flags, call one library function, print.

Imports nothing heavy at module level: torch loads inside the handlers.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from bnmodel.config import ACTIVATIONS, BN_PLACEMENTS
from bnmodel.train_config import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig

__all__ = ["register"]

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainConfig)}
EXIT_ERROR, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 1, 130


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a batch-normalized MLP (digits by default)",
        description="Train a BNMLP and write best.pt, last.pt, metrics.csv and metrics.png to "
        "--out. Runs under torchrun for DistributedDataParallel.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_data_flags(train)
    _add_model_flags(train)
    _add_optim_flags(train)
    _add_run_flags(train)
    train.set_defaults(handler=_train)

    compare = subparsers.add_parser(
        "compare-bn",
        help="reproduce the BN paper's claim on digits: MLP with vs without batch norm",
        description="Train 3x100 sigmoid MLPs (batch 60) with and without BN over several "
        "seeds; write compare_bn.png and compare_bn.csv and print the table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    compare.add_argument("--out", type=Path, default=Path("runs/compare-bn"))
    compare.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    compare.add_argument("--epochs", type=int, default=60)
    compare.add_argument("--lr", type=float, default=0.5, help="plain SGD learning rate (both)")
    compare.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    compare.set_defaults(handler=_compare_bn)


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default=_DEFAULTS["data"],
        help="'digits', 'synthetic:ROWS,FEATURES,CLASSES[,SEED]', or a .csv/.parquet/.npz file",
    )
    g.add_argument(
        "--target",
        default=None,
        help="target column (CSV/Parquet; default 'target') or array (NPZ; default y)",
    )
    g.add_argument(
        "--task",
        choices=("classification", "regression"),
        default=None,
        help="default: inferred (integer or string targets are classification)",
    )
    g.add_argument("--val-fraction", type=float, default=_DEFAULTS["val_fraction"])


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--hidden",
        dest="hidden_sizes",
        type=int,
        nargs="+",
        default=list(_DEFAULTS["hidden_sizes"]),
        help="hidden layer sizes",
    )
    g.add_argument("--activation", choices=ACTIVATIONS, default=_DEFAULTS["activation"])
    g.add_argument(
        "--bn",
        dest="bn_placement",
        choices=BN_PLACEMENTS,
        default=_DEFAULTS["bn_placement"],
        help="pre: Linear->BN->act; post: Linear->act->BN; none: no batch norm",
    )
    g.add_argument("--dropout", type=float, default=_DEFAULTS["dropout"])
    g.add_argument("--bn-eps", type=float, default=_DEFAULTS["bn_eps"])
    g.add_argument(
        "--bn-momentum",
        type=_momentum,
        default=_DEFAULTS["bn_momentum"],
        help="running-stats momentum, or 'none' for the cumulative average",
    )
    g.add_argument(
        "--no-standardize",
        dest="standardize_input",
        action="store_false",
        help="do not store the training set's feature mean/std in the model",
    )


def _add_optim_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimization")
    g.add_argument("--epochs", type=int, default=_DEFAULTS["epochs"])
    g.add_argument(
        "--batch-size", type=int, default=_DEFAULTS["batch_size"], help="rows per step per process"
    )
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=_DEFAULTS["optimizer"])
    g.add_argument("--lr", type=float, default=_DEFAULTS["lr"], help="peak learning rate")
    g.add_argument("--momentum", type=float, default=_DEFAULTS["momentum"], help="SGD only")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=_DEFAULTS["weight_decay"],
        help="on weight matrices only, never on BN parameters or biases",
    )
    g.add_argument("--schedule", choices=SCHEDULES, default=_DEFAULTS["schedule"])
    g.add_argument(
        "--warmup",
        type=float,
        default=_DEFAULTS["warmup"],
        help="fraction of steps with linear warmup (constant/cosine)",
    )
    g.add_argument("--grad-clip", type=float, default=None, help="max gradient L2 norm")
    g.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many epochs without a better validation metric",
    )
    g.add_argument("--drop-last", action="store_true", help="drop every partial last batch")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument("--out", dest="out_dir", type=Path, default=_DEFAULTS["out_dir"])
    g.add_argument("--resume", type=Path, default=None, help="continue from a last.pt")
    g.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels (bitwise-reproducible on the same machine)",
    )
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=_DEFAULTS["device"])
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=_DEFAULTS["precision"],
        help="tf32: TF32 matmuls; bf16: bfloat16 autocast",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes (CUDA only)"
    )
    g.add_argument(
        "--recompute-bn-stats",
        action="store_true",
        help="after training, re-estimate BN population statistics of best.pt over "
        "the training set (Ioffe & Szegedy, Algorithm 2)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _momentum(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def _error(command: str, message: object, code: int) -> int:
    print(f"bnmodel {command}: error: {message}", file=sys.stderr)
    return code


def _train(args: argparse.Namespace) -> int:
    names = {f.name for f in fields(TrainConfig)}
    try:
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    except ValueError as exc:
        return _error("train", exc, EXIT_ERROR)
    from bnmodel.train import TrainingDivergedError, train

    try:
        result = train(config, progress=not args.quiet)
    except TrainingDivergedError as exc:
        return _error("train", exc, EXIT_DIVERGED)
    except KeyboardInterrupt:  # under torchrun (no clean stop there): last.pt is the last epoch
        return _error(
            "train",
            f"interrupted; {config.out_dir / 'last.pt'} holds the last completed epoch",
            EXIT_INTERRUPTED,
        )
    except ValueError as exc:  # DataError, ResumeError, CheckpointError, device/flag problems
        return _error("train", exc, EXIT_ERROR)
    return _leave_if_distributed(_report(result))


def _leave_if_distributed(code: int) -> int:
    """Under torchrun, end the process as soon as training is done and the group is left.

    With gloo, a rank aborted after every rank had passed the final barrier and left the process
    group ("terminate called without an active exception"; seen in full CI runs, once even with
    the barrier; not reproduced in 40 runs on their own): torchrun then reports a failed run
    although the checkpoints are complete. Nothing is left to clean up, so skip the teardown.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _report(result) -> int:
    """Rank 0 prints the outcome; the exit code of this process."""
    if result.rank != 0:  # under torchrun, rank 0 reports for all
        return 0
    if result.interrupted:
        print(
            f"interrupted; state saved. Continue with: bnmodel train ... --resume "
            f"{result.last_checkpoint}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(
        f"best {result.metric} {result.best_metric:.4f} at epoch {result.best_epoch}"
        f"{' (stopped early)' if result.stopped_early else ''}"
    )
    if result.bn_recompute is not None:
        print(
            f"BN statistics recomputed: {result.metric} {result.bn_recompute['before']:.4f} -> "
            f"{result.bn_recompute['after']:.4f}"
        )
    print(f"checkpoints: {result.best_checkpoint} {result.last_checkpoint}")
    print(f"metrics: {result.metrics_csv}" + (f" {result.plot}" if result.plot else ""))
    return 0


def _compare_bn(args: argparse.Namespace) -> int:
    from bnmodel.compare_bn import compare_bn, format_table

    try:
        report = compare_bn(
            args.out, seeds=tuple(args.seeds), epochs=args.epochs, lr=args.lr, device=args.device
        )
    except ValueError as exc:
        return _error("compare-bn", exc, EXIT_ERROR)
    print(format_table(report.rows))
    print(f"plot: {report.plot}\ntable: {report.table}")
    return 0
