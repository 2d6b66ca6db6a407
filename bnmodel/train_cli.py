"""``bnmodel train`` and ``bnmodel compare-bn``: parse flags, call one library function, print.

Imports nothing heavy at module level: torch loads inside the handlers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from bnmodel.config import ACTIVATIONS, BN_PLACEMENTS
from bnmodel.errors import EXIT_INTERRUPTED, UsageError
from bnmodel.train_config import MONITORS, OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig

__all__ = ["register"]

# One place per default: the model's in ModelConfig, the rest in TrainConfig.
_DEFAULTS: dict[str, Any] = TrainConfig().to_flags()
_FLAG_NAMES = frozenset(_DEFAULTS)
# Flags that may differ from the checkpoint's on --resume: where and how long to run, not what
# is trained or how (those would make the resumed run a different experiment).
SAFE_ON_RESUME = frozenset(
    {
        "epochs",
        "patience",
        "out_dir",
        "device",
        "precision",
        "compile",
        "deterministic",
        "recompute_bn_stats",
        "sync_bn",
        "overwrite",
        "resume",
    }
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults appended to every flag's help, except on-by-default switches (--no-X), whose
    help says the default in words: "(default: True)" after --no-standardize reads backwards."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if isinstance(action, argparse._StoreFalseAction):
            return action.help
        return super()._get_help_string(action)


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train a batch-normalized MLP (digits by default)",
        description="Train a BNMLP and write best.pt, last.pt, metrics.csv and metrics.png to "
        "--out. Runs under torchrun for DistributedDataParallel.",
        formatter_class=_HelpFormatter,
    )
    _add_data_flags(train)
    _add_model_flags(train)
    _add_optim_flags(train)
    _add_run_flags(train)
    _track_explicit(train)
    train.set_defaults(handler=_train)

    compare = subparsers.add_parser(
        "compare-bn",
        help="reproduce the BN paper's claim on digits: MLP with vs without batch norm",
        description="Train 3x100 sigmoid MLPs (batch 60) with and without BN over several "
        "seeds; write compare_bn.png and compare_bn.csv and print the table.",
        formatter_class=_HelpFormatter,
    )
    compare.add_argument("--out", type=Path, default=Path("runs/compare-bn"), help="run folder")
    compare.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run each")
    compare.add_argument("--epochs", type=int, default=60, help="epochs per run")
    compare.add_argument("--lr", type=float, default=0.5, help="plain SGD learning rate (both)")
    compare.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="cpu", help="where to train"
    )
    compare.add_argument(
        "--overwrite", action="store_true", help="replace an earlier comparison in --out"
    )
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
        help="target column (CSV/Parquet; None means 'target'; 'a,b': several, regression) "
        "or array (NPZ; None means y)",
    )
    from bnmodel.data import INTEGER_TASK_RULE

    g.add_argument(
        "--task",
        choices=("classification", "regression"),
        default=None,
        help="None: inferred; string or bool targets are classification, float targets "
        f"regression, and {INTEGER_TASK_RULE}",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=_DEFAULTS["val_fraction"],
        help="share of the rows held out for validation (model selection, early stopping)",
    )
    g.add_argument(
        "--test",
        default=None,
        help="a file of held-out test rows (same columns), evaluated once with best.pt",
    )
    g.add_argument(
        "--test-fraction",
        type=float,
        default=_DEFAULTS["test_fraction"],
        help="share of --data's rows held out as test rows instead of --test (0: none)",
    )
    g.add_argument(
        "--categorical",
        default=list(_DEFAULTS["categorical"]),
        type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
        metavar="COL,...",
        help="columns to treat as categories besides string, bool and category columns "
        "(e.g. integer codes)",
    )
    g.add_argument(
        "--drop",
        default=list(_DEFAULTS["drop"]),
        type=lambda text: [c.strip() for c in text.split(",") if c.strip()],
        metavar="COL,...",
        help="columns to leave out of the features (per-row ids, leaked answers)",
    )
    g.add_argument(
        "--impute",
        choices=("mean", "median"),
        default=_DEFAULTS["impute"],
        help="a missing numeric cell (blank, NA, NaN) takes the training rows' mean or median",
    )
    g.add_argument(
        "--no-missing-indicators",
        dest="missing_indicators",
        action="store_false",
        help="no 0/1 missing-indicator feature (by default each numeric column with missing "
        "training cells gets one)",
    )
    g.add_argument(
        "--min-category-count",
        type=int,
        default=_DEFAULTS["min_category_count"],
        help="training rows a categorical value needs for its own slot; rarer, unseen and "
        "blank values share one 'other' slot",
    )
    g.add_argument(
        "--max-categories",
        type=int,
        default=_DEFAULTS["max_categories"],
        help="most frequent values kept per categorical column",
    )


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
    g.add_argument(
        "--activation", choices=ACTIVATIONS, default=_DEFAULTS["activation"], help="nonlinearity"
    )
    g.add_argument(
        "--bn",
        dest="bn_placement",
        choices=BN_PLACEMENTS,
        default=_DEFAULTS["bn_placement"],
        help="pre: Linear->BN->act; post: Linear->act->BN; none: no batch norm",
    )
    g.add_argument(
        "--dropout", type=float, default=_DEFAULTS["dropout"], help="dropout after each block"
    )
    g.add_argument(
        "--embedding-dim",
        type=int,
        default=_DEFAULTS["embedding_dim"],
        help="categorical columns: 0 one-hot into the first layer; N > 0 a learned N-wide "
        "embedding per column",
    )
    g.add_argument(
        "--bn-eps", type=float, default=_DEFAULTS["bn_eps"], help="batch norm variance epsilon"
    )
    g.add_argument(
        "--bn-momentum",
        type=_momentum,
        default=_DEFAULTS["bn_momentum"],
        help="running-stats momentum, or 'none' for the cumulative average",
    )
    # store_false flags: say in words what the default is, not "(default: True)".
    g.add_argument(
        "--no-standardize",
        dest="standardize_input",
        action="store_false",
        help="feed raw features to the first layer (by default the model standardizes them "
        "with the training rows' mean and std)",
    )
    g.add_argument(
        "--no-standardize-target",
        dest="standardize_target",
        action="store_false",
        help="regression: fit raw target values (by default the model fits the standardized "
        "target and maps back to target units in its last layer)",
    )


def _add_optim_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimization")
    g.add_argument(
        "--epochs",
        type=int,
        default=_DEFAULTS["epochs"],
        help="passes over the training rows (with --resume: the new total)",
    )
    g.add_argument(
        "--batch-size", type=int, default=_DEFAULTS["batch_size"], help="rows per step per process"
    )
    g.add_argument(
        "--optimizer", choices=OPTIMIZERS, default=_DEFAULTS["optimizer"], help="update rule"
    )
    g.add_argument("--lr", type=float, default=_DEFAULTS["lr"], help="peak learning rate")
    g.add_argument("--momentum", type=float, default=_DEFAULTS["momentum"], help="SGD only")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=_DEFAULTS["weight_decay"],
        help="on weight matrices only, never on BN parameters or biases",
    )
    g.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=_DEFAULTS["schedule"],
        help="learning rate over the run",
    )
    g.add_argument(
        "--warmup",
        type=float,
        default=_DEFAULTS["warmup"],
        help="fraction of steps with linear warmup (constant/cosine)",
    )
    g.add_argument(
        "--grad-clip", type=float, default=None, help="max gradient L2 norm (None: no clipping)"
    )
    g.add_argument(
        "--monitor",
        choices=tuple(MONITORS),
        default=_DEFAULTS["monitor"],
        help="validation metric best.pt and --patience follow (ties: lower val_loss wins)",
    )
    g.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after this many epochs without a better --monitor value (None: never)",
    )
    g.add_argument("--drop-last", action="store_true", help="drop every partial last batch")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution")
    g.add_argument(
        "--out",
        dest="out_dir",
        type=Path,
        default=_DEFAULTS["out_dir"],
        help="run folder (with --resume: the checkpoint's folder unless given)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    g.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="continue from a last.pt with its flags; given flags override only "
        f"{', '.join(sorted('--' + f.replace('_', '-') for f in SAFE_ON_RESUME - {'resume'}))}",
    )
    g.add_argument("--seed", type=int, default=_DEFAULTS["seed"], help="data split and init")
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels (bitwise-reproducible on the same machine)",
    )
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=_DEFAULTS["device"],
        help="auto: cuda when available",
    )
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


def _track_explicit(parser: argparse.ArgumentParser) -> None:
    """Record in ``namespace.explicit`` the dest of every flag given on the command line, so
    --resume can tell a flag the user typed from a default."""

    def recording(action_type: type[argparse.Action]) -> type[argparse.Action]:
        class Recording(action_type):  # type: ignore[misc, valid-type]
            def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
                explicit = set(getattr(namespace, "explicit", set()))
                namespace.explicit = explicit | {self.dest}
                super().__call__(parser, namespace, values, option_string)

        return Recording

    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            action.__class__ = recording(type(action))


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the flags, or with --resume the checkpoint's flags with the explicitly
    given safe ones on top. An unsafe change is an error naming the flag and both values."""
    names = _FLAG_NAMES
    given = {k: v for k, v in vars(args).items() if k in names}
    if args.resume is None:
        return _flags_config(given)
    from bnmodel.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.resume)
    if ckpt.training_state is None:
        raise ValueError(
            f"--resume {args.resume}: this checkpoint has no training state (best.pt is "
            "for export); resume from last.pt in the same output directory"
        )
    saved = TrainConfig.from_flags(ckpt.training_state["train_config"]).to_flags()
    explicit = getattr(args, "explicit", set()) & names
    for name in sorted(explicit - SAFE_ON_RESUME):
        new, old = given[name], saved.get(name)
        if (list(new) if isinstance(new, tuple | list) else new) != old and str(new) != str(old):
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} {new} differs from the resumed run's {old}; a resumed run keeps what "
                f"it trains and how (start a new run to change {flag})"
            )
    merged = {**saved, **{k: given[k] for k in explicit}, "resume": args.resume}
    if "out_dir" not in explicit:
        merged["out_dir"] = args.resume.parent
    return _flags_config(merged)


def _flags_config(flags: dict[str, Any]) -> TrainConfig:
    """TrainConfig's validation names the flag at fault: a usage error."""
    try:
        return TrainConfig.from_flags(flags)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _train(args: argparse.Namespace) -> int:
    """Errors are raised to bnmodel.cli.main, which maps them to exit codes."""
    config = _config_from_args(args)
    from bnmodel.train import train

    def log(message: str) -> None:
        print(message, flush=True)

    try:
        result = train(config, progress=not args.quiet, log=log)
    except KeyboardInterrupt:  # under torchrun (no clean stop there): last.pt is the last epoch
        print(
            f"bnmodel train: error: interrupted; {config.out_dir / 'last.pt'} holds the last "
            f"completed epoch; continue with: bnmodel train --resume {config.out_dir / 'last.pt'}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
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
            f"interrupted; state saved. Continue with: bnmodel train --resume "
            f"{result.last_checkpoint}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(
        f"best {result.metric} {result.best_metric:.4f} at epoch {result.best_epoch} of "
        f"{result.epochs_run}{' (stopped early)' if result.stopped_early else ''}"
    )
    if result.best_metrics:
        print("validation (best.pt): " + _format_metrics(result.best_metrics, "val_"))
    if result.test_metrics is not None:
        print("test (best.pt): " + _format_metrics(result.test_metrics, "test_"))
    if result.bn_recompute is not None:
        print(
            f"BN statistics recomputed: {result.metric} {result.bn_recompute['before']:.4f} -> "
            f"{result.bn_recompute['after']:.4f}"
        )
    print(f"checkpoints: {result.best_checkpoint} {result.last_checkpoint}")
    print(f"metrics: {result.metrics_csv}" + (f" {result.plot}" if result.plot else ""))
    return 0


def _format_metrics(metrics: dict[str, float], prefix: str) -> str:
    return ", ".join(
        f"{k.removeprefix(prefix)} {v:.4g}"
        for k, v in metrics.items()
        if k.startswith(prefix) and "before" not in k
    )


def _compare_bn(args: argparse.Namespace) -> int:
    from bnmodel.compare_bn import compare_bn, format_table

    report = compare_bn(
        args.out,
        seeds=tuple(args.seeds),
        epochs=args.epochs,
        lr=args.lr,
        device=args.device,
        overwrite=args.overwrite,
        log=lambda line: print(line, flush=True),
    )
    print(format_table(report.rows))
    print(f"plot: {report.plot}\ntable: {report.table}")
    return 0
