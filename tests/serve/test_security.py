"""Access control: TLS, mutual TLS, bearer tokens, the model-control switch (serve/security.py)."""

from __future__ import annotations

import asyncio
import http.client
import ssl
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import numpy as np
import pytest
import trustme
from bnmodel.serve.client import InferenceClient, InferenceServerError
from bnmodel.serve.proto import grpc_service_pb2 as pb
from bnmodel.serve.security import (
    SecurityError,
    TLSFiles,
    TokenInterceptor,
    read_token,
    token_matches,
)
from bnmodel.serve.servicer import InferenceServicer, build_handler
from conftest import run_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

TOKEN = "s3cret-Token_0123456789"
X = np.ones((2, 8), np.float32)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """Throwaway CA, server cert for 127.0.0.1, a client cert; a second, untrusted CA."""
    root = tmp_path_factory.mktemp("pki")
    ca, rogue = trustme.CA(), trustme.CA()
    files = {"ca": root / "ca.pem", "rogue_ca": root / "rogue-ca.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    rogue.cert_pem.write_to_path(files["rogue_ca"])
    for name, issuer, identity in (
        ("server", ca, "127.0.0.1"),
        ("client", ca, "client.example"),
        ("rogue_client", rogue, "client.example"),
    ):
        cert = issuer.issue_cert(identity)
        files[f"{name}_key"] = root / f"{name}-key.pem"
        files[f"{name}_cert"] = root / f"{name}-cert.pem"
        cert.private_key_pem.write_to_path(files[f"{name}_key"])
        files[f"{name}_cert"].write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    files["token"] = root / "token"
    files["token"].write_text(TOKEN + "\n")
    files["token"].chmod(0o600)
    return files


def _server_tls(pki, mutual: bool) -> list[str]:
    args = ["--tls-cert", str(pki["server_cert"]), "--tls-key", str(pki["server_key"])]
    return args + (["--tls-ca", str(pki["ca"])] if mutual else [])


@pytest.fixture(scope="module")
def tls_server(repository, pki, tmp_path_factory):
    """TLS only: no client certificate, no token, model control off."""
    log = tmp_path_factory.mktemp("tls") / "server.log"
    with run_server(
        "--model-repository", str(repository), *_server_tls(pki, False), log_path=log
    ) as server:
        yield server


@pytest.fixture(scope="module")
def locked_server(repository, pki, tmp_path_factory):
    """Mutual TLS + token + model control on."""
    log = tmp_path_factory.mktemp("locked") / "server.log"
    args = [*_server_tls(pki, True), "--auth-token-file", str(pki["token"])]
    with run_server(
        "--model-repository", str(repository), *args, "--allow-model-control", log_path=log
    ) as server:
        yield server


def _infer(url: str, **kwargs) -> str:
    """ "OK" or the status name of one inference."""
    try:
        with InferenceClient(url, timeout=5, **kwargs) as client:
            client.infer("clf", {"features": X})
        return "OK"
    except InferenceServerError as exc:
        return exc.code


def test_tls_server_refuses_plain_and_untrusting_clients(tls_server, pki):
    assert _infer(tls_server.url, tls=TLSFiles(ca=pki["ca"])) == "OK"
    assert _infer(tls_server.url) == "UNAVAILABLE"  # plaintext client
    assert _infer(tls_server.url, tls=TLSFiles(ca=pki["rogue_ca"])) == "UNAVAILABLE"
    with (
        InferenceClient(tls_server.url, tls=TLSFiles(ca=pki["ca"])) as client,
        pytest.raises(InferenceServerError) as info,
    ):
        client.load_model("clf")
    assert info.value.code == "PERMISSION_DENIED" and "--allow-model-control" in info.value.message


def test_mutual_tls_requires_a_client_certificate_from_the_ca(locked_server, pki):
    good = TLSFiles(pki["client_cert"], pki["client_key"], pki["ca"])
    assert _infer(locked_server.url, tls=good, auth_token=TOKEN) == "OK"
    assert _infer(locked_server.url, auth_token=TOKEN) == "UNAVAILABLE"  # plaintext
    no_cert = TLSFiles(ca=pki["ca"])
    assert _infer(locked_server.url, tls=no_cert, auth_token=TOKEN) == "UNAVAILABLE"
    rogue = TLSFiles(pki["rogue_client_cert"], pki["rogue_client_key"], pki["ca"])
    assert _infer(locked_server.url, tls=rogue, auth_token=TOKEN) == "UNAVAILABLE"


def test_token_needed_for_everything_but_health(locked_server, pki):
    tls = TLSFiles(pki["client_cert"], pki["client_key"], pki["ca"])
    assert _infer(locked_server.url, tls=tls) == "UNAUTHENTICATED"
    assert _infer(locked_server.url, tls=tls, auth_token="wrong") == "UNAUTHENTICATED"
    assert _infer(locked_server.url, tls=tls, auth_token=TOKEN + "x") == "UNAUTHENTICATED"
    with InferenceClient(locked_server.url, tls=tls, timeout=5) as client:
        with pytest.raises(InferenceServerError) as info:
            client.server_ready()
        assert info.value.code == "UNAUTHENTICATED" and "Bearer" in info.value.message
    with InferenceClient(locked_server.url, tls=tls, auth_token=TOKEN) as client:
        client.unload_model("reg")  # model control on here, and the token is right
        assert not client.model_ready("reg")
        client.load_model("reg")
        assert client.model_ready("reg")
    credentials = grpc.ssl_channel_credentials(
        pki["ca"].read_bytes(), pki["client_key"].read_bytes(), pki["client_cert"].read_bytes()
    )
    with grpc.secure_channel(locked_server.url, credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING  # no token needed


def test_infer_command_takes_the_same_options(locked_server, pki, tmp_path):
    np.save(tmp_path / "rows.npy", X)
    base = [sys.executable, "-m", "bnmodel", "infer", "--url", locked_server.url, "--model"]
    base += ["clf", "--input", str(tmp_path / "rows.npy"), "--tls-ca", str(pki["ca"])]
    base += ["--tls-cert", str(pki["client_cert"]), "--tls-key", str(pki["client_key"])]
    ok = subprocess.run(
        [*base, "--auth-token-file", str(pki["token"])], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("class,p_setosa") and len(ok.stdout.splitlines()) == 3
    refused = subprocess.run(base, capture_output=True, text=True)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr


def test_token_matching_rules():
    assert token_matches((("authorization", f"Bearer {TOKEN}"),), TOKEN)
    assert token_matches((("authorization", f"bearer  {TOKEN} "),), TOKEN)
    assert not token_matches((("authorization", TOKEN),), TOKEN)  # no scheme
    assert not token_matches((("authorization", f"Basic {TOKEN}"),), TOKEN)
    assert not token_matches((("authorization", f"Bearer {TOKEN[:-1]}"),), TOKEN)
    assert not token_matches((("authorization", "Bearer \u00e9"),), TOKEN)
    two = (("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer x"))
    assert not token_matches(two, TOKEN)  # exactly one header
    assert not token_matches((), TOKEN)


class _Details:
    def __init__(self, method: str, metadata=()) -> None:
        self.method = f"/inference.GRPCInferenceService/{method}"
        self.invocation_metadata = metadata


class _Aborted(Exception):
    pass


class _Context:
    def time_remaining(self):
        return None

    async def abort(self, code, message):
        raise _Aborted(code, message)


def test_model_control_stays_off_even_with_the_token():
    class Plane:  # what the servicer calls on RepositoryModelUnload
        unloaded: list[str] = []

        async def unload(self, name):
            self.unloaded.append(name)

    details = _Details("RepositoryModelUnload", (("authorization", f"Bearer {TOKEN}"),))
    assert TokenInterceptor(TOKEN)._refusal(details) is None  # the token is right ...
    request = pb.RepositoryModelUnloadRequest(model_name="reg").SerializeToString()
    for allowed, expected in ((False, grpc.StatusCode.PERMISSION_DENIED), (True, None)):
        plane = Plane()
        handler = build_handler(InferenceServicer(plane), allow_model_control=allowed)
        call = handler.service(details).unary_unary(request, _Context())
        try:
            asyncio.run(call)
            code = None
        except _Aborted as aborted:
            code, message = aborted.args
            assert "--allow-model-control" in message
        assert code == expected  # ... but only --allow-model-control lets it through
        assert plane.unloaded == ([] if expected else ["reg"])


def test_token_interceptor_spares_health_only():
    interceptor = TokenInterceptor(TOKEN)
    assert interceptor._refusal(_Details("ModelInfer")) is not None
    assert "Bearer" in interceptor._refusal(_Details("ServerReady", (("x", "y"),)))
    health = _Details("Check")
    health.method = "/grpc.health.v1.Health/Check"
    assert interceptor._refusal(health) is None


def test_token_and_tls_files_are_checked(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SecurityError, match="--auth-token-file .* is empty"):
        read_token(empty)
    spaced = tmp_path / "spaced"
    spaced.write_text("two words")
    with pytest.raises(SecurityError, match="printable ASCII without spaces"):
        read_token(spaced)
    with pytest.raises(SecurityError, match="--tls-cert and --tls-key go together"):
        TLSFiles(cert=tmp_path / "c.pem")
    result = subprocess.run(
        [sys.executable, "-m", "bnmodel", "serve", "--model-repository", str(tmp_path)]
        + ["--tls-ca", str(empty)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--tls-ca" in result.stderr


def test_http_takes_the_same_tls_and_token(locked_server, pki, tmp_path):
    from bnmodel.serve.http_client import HttpInferenceClient

    url = locked_server.http_url
    assert url.startswith("https://")
    tls = TLSFiles(pki["client_cert"], pki["client_key"], pki["ca"])

    def http_infer(**kwargs) -> str:
        try:
            with HttpInferenceClient(url, timeout=5, **kwargs) as client:
                client.infer("clf", {"features": X})
            return "OK"
        except InferenceServerError as exc:
            return exc.code

    assert http_infer(tls=tls, auth_token=TOKEN) == "OK"
    assert http_infer(tls=tls) == "HTTP 401"
    assert http_infer(tls=tls, auth_token="wrong") == "HTTP 401"
    assert http_infer(tls=TLSFiles(ca=pki["ca"]), auth_token=TOKEN) == "UNAVAILABLE"  # no cert
    assert http_infer(auth_token=TOKEN) == "UNAVAILABLE"  # does not trust the server's CA
    # Health stays open: a probe with a client certificate but no token is answered.
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.load_cert_chain(pki["client_cert"], pki["client_key"])
    parts = urlsplit(url)
    probe = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=5)
    probe.request("GET", "/v2/health/ready")
    assert probe.getresponse().status == 200
    probe.close()
    np.save(tmp_path / "rows.npy", X)
    command = [sys.executable, "-m", "bnmodel", "infer", "--url", url, "--model", "clf"]
    command += ["--input", str(tmp_path / "rows.npy"), "--tls-ca", str(pki["ca"])]
    command += ["--tls-cert", str(pki["client_cert"]), "--tls-key", str(pki["client_key"])]
    ok = subprocess.run(
        [*command, "--auth-token-file", str(pki["token"])], capture_output=True, text=True
    )
    assert ok.returncode == 0 and ok.stdout.startswith("class,p_setosa"), ok.stderr
