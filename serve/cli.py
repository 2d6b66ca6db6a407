"""``bnmodel serve`` and ``bnmodel infer``: parse flags, call one library function, print.

Nothing heavy is imported at module level: ``bnmodel --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .affinity import PIN_CHOICES
from .eventloop import EVENT_LOOPS

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_serve(subparsers)
    _register_infer(subparsers)


def _register_serve(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve ONNX models over the Open Inference Protocol (gRPC and HTTP)",
        description="gRPC and HTTP inference server (KServe v2 / Triton protocol) on ONNX "
        "Runtime, one process and event loop for both. Prints one line 'ready on HOST:PORT "
        "(gRPC), HOST:PORT (HTTP)' when the models are loaded; SIGTERM/SIGINT "
        "drain requests in flight, then exit.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model-repository",
        type=Path,
        metavar="DIR",
        help="Triton-layout repository: DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx",
    )
    source.add_argument("--model", type=Path, metavar="FILE.onnx", help="serve one ONNX file")
    p.add_argument("--model-name", help="name for --model (default: the file's stem)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument(
        "--port", type=int, default=8001, help="0 picks a free port (default: %(default)s)"
    )
    # HTTP/REST beside gRPC (serve/http.py), Triton's convention: HTTP 8000, gRPC 8001.
    p.add_argument(
        "--http-port",
        type=int,
        default=8000,
        help="Open Inference Protocol over HTTP/JSON on this port; 0 picks a free port "
        "(default: %(default)s)",
    )
    p.add_argument("--no-http", dest="http", action="store_false", help="serve gRPC only")
    p.add_argument("--no-grpc", dest="grpc", action="store_false", help="serve HTTP only")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when it really works, else CPU (default: %(default)s)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=1024,
        help="for --model, which has no config.pbtxt (default: %(default)s)",
    )
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=0,
        help="gRPC message limit; 0: what max_batch_size rows need (default)",
    )
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per run; 0: suited to the machine (default)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="server processes sharing the port (SO_REUSEPORT; clients are balanced per "
        "connection); 0: one per core, or 1 with --allow-model-control (default)",
    )
    p.add_argument(
        "--no-batching",
        dest="batching",
        action="store_false",
        help="run every request alone (no dynamic batching, whatever config.pbtxt says)",
    )
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        metavar="US",
        help="batching window: overrides config.pbtxt's dynamic_batching "
        "max_queue_delay_microseconds and turns batching on for every batchable model",
    )
    p.add_argument(
        "--max-queue-size",
        type=int,
        default=0,
        help="requests queued per model version before RESOURCE_EXHAUSTED; "
        "0: config.pbtxt's default_queue_policy, else 1024 (default)",
    )
    p.add_argument(
        "--max-inline-us",
        type=int,
        default=50,
        metavar="US",
        help="run batches that take at most US microseconds (timed at load) on the event "
        "loop, saving a thread hand-off; larger ones run on a thread, except a lone "
        "client's (up to 1 ms: nothing else is waiting for the loop); 0: always a thread "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--pin-loop",
        choices=PIN_CHOICES,
        default="off",
        help="on: pin worker i's event loop and gRPC threads to the i-th core (ONNX Runtime's "
        "runs stay free); ~10%% more rows/s at concurrency 1 and with load spread over many "
        "connections, but a worker fed by one busy connection loses its second core "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="event loop: uvloop (faster per request) or the standard asyncio one; auto: "
        "uvloop when installed (default: %(default)s)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on HOST:PORT/metrics; 0: off (default)",
    )
    p.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="on SIGTERM, wait this long for requests in flight (default: %(default)s)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    _add_access_flags(p, server=True)
    p.add_argument(
        "--allow-model-control",
        action="store_true",
        help="allow RepositoryModelLoad/Unload over gRPC (default: PERMISSION_DENIED)",
    )
    p.add_argument(
        "--reject-non-finite",
        action="store_true",
        help="refuse NaN/inf inputs with INVALID_ARGUMENT (default: run them as sent)",
    )
    p.set_defaults(handler=_serve)


def _add_access_flags(p: argparse.ArgumentParser, *, server: bool) -> None:
    """TLS and token flags, the same names for ``serve`` and ``infer`` (serve/security.py)."""
    who = "the server's" if server else "this client's"
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help=f"{who} TLS certificate chain")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help=f"{who} TLS private key")
    p.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        help="require client certificates signed by this CA (mutual TLS)"
        if server
        else "CA that signed the server's certificate (turns TLS on)",
    )
    p.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="FILE",
        help="every RPC but health needs 'authorization: Bearer <token in FILE>'"
        if server
        else "send 'authorization: Bearer <token in FILE>'",
    )


def _serve(args: argparse.Namespace) -> int:
    from .shutdown import catch_early_signals

    catch_early_signals()  # before the heavy imports: a SIGTERM now must not kill us
    from .settings import ServerSettings, SettingsError
    from .workers import run

    try:
        settings = ServerSettings(
            model_repository=args.model_repository,
            model_path=args.model,
            model_name=args.model_name,
            host=args.host,
            port=args.port,
            device=args.device,
            max_batch_size=args.max_batch_size,
            max_message_bytes=args.max_message_bytes,
            intra_op_threads=args.intra_op_threads,
            workers=args.workers,
            grace_seconds=args.grace_seconds,
            batching=args.batching,
            max_queue_delay_us=args.max_queue_delay_us,
            max_queue_size=args.max_queue_size,
            max_inline_us=args.max_inline_us,
            metrics_port=args.metrics_port,
            event_loop=args.loop,
            pin_loop=args.pin_loop,
            log_level=args.log_level,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            auth_token_file=args.auth_token_file,
            allow_model_control=args.allow_model_control,
            reject_non_finite=args.reject_non_finite,
            http_port=args.http_port,
            http=args.http,
            grpc=args.grpc,
        )
    except SettingsError as exc:
        print(f"bnmodel serve: {exc}", file=sys.stderr)
        return 2
    return run(settings, on_ready=lambda line: print(line, flush=True))


def _register_infer(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "infer",
        help="send rows from a CSV or .npy file to a server and print predictions",
        description="Class and probabilities for a classifier, values for a regressor, as CSV.",
    )
    p.add_argument(
        "--url",
        default="127.0.0.1:8001",
        help="HOST:PORT for gRPC, http://HOST:PORT or https://HOST:PORT for HTTP "
        "(default: %(default)s)",
    )
    p.add_argument("--model", required=True, help="model name on the server")
    p.add_argument(
        "--input",
        required=True,
        type=Path,
        metavar="FILE.csv|FILE.npy",
        help="feature rows; a CSV header is matched to the model's feature names",
    )
    p.add_argument("--output", type=Path, metavar="FILE.csv", help="write here instead of stdout")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    _add_access_flags(p, server=False)
    p.set_defaults(handler=_infer)


def _infer(args: argparse.Namespace) -> int:
    from .client import InferenceServerError
    from .errors import InvalidInputError
    from .predict import predict_file, write_predictions
    from .security import SecurityError, TLSFiles, read_token

    try:
        tls = TLSFiles(args.tls_cert, args.tls_key, args.tls_ca)
        token = read_token(args.auth_token_file) if args.auth_token_file else None
        predictions = predict_file(
            args.url, args.model, args.input, timeout=args.timeout, tls=tls, auth_token=token
        )
    except (InferenceServerError, InvalidInputError, SecurityError, OSError) as exc:
        print(f"bnmodel infer: {exc}", file=sys.stderr)
        return 1
    text = write_predictions(predictions, args.output)
    if args.output is None:
        sys.stdout.write(text)
    else:
        print(f"wrote {len(predictions.values)} predictions to {args.output}")
    return 0
