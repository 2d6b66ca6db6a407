"""``bnmodel serve`` and ``bnmodel infer``: parse flags, call one library function, print.

Nothing heavy is imported at module level: ``bnmodel --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_serve(subparsers)
    _register_infer(subparsers)


def _register_serve(subparsers: argparse._SubParsersAction) -> None:
    """Flags built from ServerSettings' fields (their help, range and choices, and default)."""
    from .settings import ServerSettings, flag_name

    p = subparsers.add_parser(
        "serve",
        help="serve ONNX models over the Open Inference Protocol (gRPC and HTTP)",
        description="gRPC and HTTP inference server (KServe v2 / Triton protocol) on ONNX "
        "Runtime, one process and event loop for both. Prints one line 'ready on HOST:PORT "
        "(gRPC), HOST:PORT (HTTP)' when the models are loaded; SIGTERM/SIGINT "
        "drain requests in flight, then exit.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    for f in fields(ServerSettings):
        if "help" not in f.metadata:
            continue  # set by the server itself (worker processes)
        where = source if f.name in ("model_repository", "model_path") else p
        options = {k: v for k, v in f.metadata.items() if k in ("choices", "metavar")}
        kind = _TYPES[f.type.split(" |")[0]]
        if kind is bool:
            options["action"] = "store_false" if f.default else "store_true"
        else:
            options["type"] = kind
        silent = f.default is None or isinstance(f.default, bool) or f.default == 0
        shown = "" if silent else " (default: %(default)s)"  # 0s are explained in the help
        where.add_argument(
            flag_name(f),
            dest=f.name,
            default=f.default,
            help=f.metadata["help"].replace("%", "%%") + shown,
            **options,
        )
    p.set_defaults(handler=_serve)


_TYPES = {"Path": Path, "int": int, "float": float, "str": str, "bool": bool}


def _add_access_flags(p: argparse.ArgumentParser) -> None:
    """The client's TLS and token flags: the server's names (serve/security.py)."""
    for flag, metavar, help in (
        ("--tls-cert", "PEM", "this client's TLS certificate"),
        ("--tls-key", "PEM", "this client's TLS private key"),
        ("--tls-ca", "PEM", "CA that signed the server's certificate (turns TLS on)"),
        ("--auth-token-file", "FILE", "send 'authorization: Bearer <token in FILE>'"),
    ):
        p.add_argument(flag, type=Path, metavar=metavar, help=help)


def _serve(args: argparse.Namespace) -> int:
    from .shutdown import catch_early_signals

    catch_early_signals()  # before the heavy imports: a SIGTERM now must not kill us
    from bnmodel.errors import UsageError

    from .settings import ServerSettings, SettingsError
    from .workers import run

    names = {f.name for f in fields(ServerSettings)}
    try:
        settings = ServerSettings(**{k: v for k, v in vars(args).items() if k in names})
    except SettingsError as exc:  # a flag's value: bnmodel.cli.main exits 2
        raise UsageError(str(exc)) from None
    return run(settings, on_ready=lambda line: print(line, flush=True))


def _register_infer(subparsers: argparse._SubParsersAction) -> None:
    from .settings import DEFAULT_GRPC_PORT

    p = subparsers.add_parser(
        "infer",
        help="send rows from a table (CSV/TSV, compressed, Parquet) or .npy to a server and "
        "print predictions",
        description="Class and probabilities for a classifier, values for a regressor, as CSV.",
    )
    p.add_argument(
        "--url",
        default=f"127.0.0.1:{DEFAULT_GRPC_PORT}",
        help="HOST:PORT for gRPC, http://HOST:PORT or https://HOST:PORT for HTTP "
        "(default: %(default)s)",
    )
    p.add_argument("--model", required=True, help="model name on the server")
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        metavar="FILE",
        help="rows: .csv, .tsv or .txt (optionally .gz or .zst), .parquet, .npz or .npy; "
        "columns are matched to the model's by name",
    )
    p.add_argument("--output", type=Path, metavar="FILE.csv", help="write here instead of stdout")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    _add_access_flags(p)
    p.set_defaults(handler=_infer)


def _infer(args: argparse.Namespace) -> int:
    from bnmodel.remote import predict_file, write_predictions

    from .security import TLSFiles, read_token

    # InferenceServerError, InvalidInputError, SecurityError and OSError (the input or
    # --output) go to bnmodel.cli.main: one line on stderr, exit 1.
    tls = TLSFiles(args.tls_cert, args.tls_key, args.tls_ca)
    token = read_token(args.auth_token_file) if args.auth_token_file else None
    predictions = predict_file(
        args.url, args.model, args.input, timeout=args.timeout, tls=tls, auth_token=token
    )
    text = write_predictions(predictions, args.output)
    for line in predictions.warnings:  # categorical text the model never saw
        print(f"bnmodel infer: warning: {line}", file=sys.stderr)
    bad = predictions.non_finite_rows
    if bad:
        shown = ", ".join(str(i + 1) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
        print(
            f"bnmodel infer: warning: the model gave NaN or inf for {len(bad)} row(s) "
            f"(rows {shown}); no class is given for them",
            file=sys.stderr,
        )
    if args.output is None:
        sys.stdout.write(text)
    else:
        print(f"wrote {len(predictions.values)} predictions to {args.output}")
    return 0
