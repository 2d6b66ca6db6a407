"""A small synchronous client for the Open Inference Protocol over HTTP: numpy in, numpy out.

The HTTP twin of serve/client.py's :class:`InferenceClient` for what ``bnmodel infer`` needs
(model config, inference), on the standard library's http.client with one keep-alive
connection. Tensors travel as Triton's binary tensor data both ways. Failures raise the same
:class:`InferenceServerError`, its ``code`` the HTTP status ("HTTP 404").

    with HttpInferenceClient("http://127.0.0.1:8000") as client:
        probabilities = client.infer("digits", rows)["probabilities"]
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlsplit

import numpy as np
from google.protobuf import json_format

from .client import ClosingClient, InferenceServerError, only_input_name
from .codec import decode_raw, encode_raw, lookup_datatype
from .errors import InvalidInputError
from .http_codec import HEADER_LENGTH
from .proto import model_config_pb2
from .security import TLSFiles
from .settings import DEFAULT_HTTP_PORT

__all__ = ["HttpInferenceClient", "is_http_url"]


def is_http_url(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _ssl_context(tls: TLSFiles | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca) if tls and tls.ca else None)
    if tls is not None and tls.cert is not None:
        context.load_cert_chain(tls.cert, tls.key)
    return context


class HttpInferenceClient(ClosingClient):
    """Blocking client for ``http://HOST:PORT`` or ``https://HOST:PORT``."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        tls: TLSFiles | None = None,
        auth_token: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(f"--url {url}: expected http://HOST:PORT or https://HOST:PORT")
        self.url = url
        self._input_names: dict[tuple[str, str], str] = {}  # see client.only_input_name
        self._headers = {"authorization": f"Bearer {auth_token}"} if auth_token else {}
        if parts.scheme == "https" or (tls is not None and tls.enabled):
            self._connection = http.client.HTTPSConnection(
                parts.hostname, parts.port or 443, timeout=timeout, context=_ssl_context(tls)
            )
        else:
            self._connection = http.client.HTTPConnection(
                parts.hostname, parts.port or 80, timeout=timeout
            )

    def close(self) -> None:
        self._connection.close()

    def _call(self, method: str, verb: str, path: str, body: bytes = b"", headers=None):
        """(body, response headers) of a 200 answer; InferenceServerError otherwise."""
        try:
            self._connection.request(verb, path, body, {**self._headers, **(headers or {})})
            response = self._connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._connection.close()
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, http.client.BadStatusLine):  # e.g. a gRPC port's HTTP/2 frames
                reason = (
                    "the answer is not HTTP/1.1; is this the gRPC port? "
                    f"(bnmodel serve listens for HTTP on --http-port, {DEFAULT_HTTP_PORT} by "
                    "default)"
                )
            raise InferenceServerError(
                method, "UNAVAILABLE", f"{reason} (server {self.url})"
            ) from None
        if response.status != 200:
            try:
                message = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                message = data[:200].decode("utf-8", "replace") or response.reason
            code = f"HTTP {response.status}"
            raise InferenceServerError(method, code, f"{message} ({self.url})")
        return data, response.headers

    def _model_path(self, name: str, version: str) -> str:
        path = f"/v2/models/{quote(name, safe='')}"
        return f"{path}/versions/{quote(version, safe='')}" if version else path

    def model_config(
        self, name: str, version: str = "", timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        data, _ = self._call("ModelConfig", "GET", self._model_path(name, version) + "/config")
        config = model_config_pb2.ModelConfig()
        json_format.Parse(data, config, ignore_unknown_fields=True)
        return config

    def infer(
        self,
        model: str,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] = (),
        version: str = "",
        request_id: str = "",
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` ({name: array}, or one array for the input "features"
        unless the model says otherwise); returns {output name: array}."""
        if not isinstance(inputs, Mapping):
            name = only_input_name(
                self._input_names, model, version, lambda: self._inputs(model, version)
            )
            inputs = {name: inputs}
        tensors, blobs = [], []
        for name, array in inputs.items():
            datatype, raw = encode_raw(np.asarray(array))
            tensors.append(
                {
                    "name": name,
                    "datatype": datatype.name,
                    "shape": list(np.shape(array)),
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
            blobs.append(raw)
        document = {"inputs": tensors, "parameters": {"binary_data_output": True}}
        if outputs:
            document["outputs"] = [
                {"name": n, "parameters": {"binary_data": True}} for n in outputs
            ]
        if request_id:
            document["id"] = request_id
        header = json.dumps(document).encode()
        data, headers = self._call(
            "ModelInfer",
            "POST",
            self._model_path(model, version) + "/infer",
            b"".join((header, *blobs)),
            {HEADER_LENGTH: str(len(header)), "content-type": "application/octet-stream"},
        )
        return _decode_outputs(data, headers.get(HEADER_LENGTH))

    def _inputs(self, model: str, version: str) -> list[str]:
        data, _ = self._call("ModelMetadata", "GET", self._model_path(model, version))
        return [t["name"] for t in json.loads(data)["inputs"]]


def _decode_outputs(data: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    length = int(header_length) if header_length else len(data)
    document = json.loads(data[:length])
    outputs, offset = {}, length
    for tensor in document["outputs"]:
        shape = tuple(tensor["shape"])
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is None:  # a JSON answer (a server that ignores binary_data_output)
            dtype = lookup_datatype(tensor["datatype"]).dtype
            outputs[tensor["name"]] = np.asarray(tensor["data"], dtype=dtype).reshape(shape)
            continue
        outputs[tensor["name"]] = decode_raw(
            data[offset : offset + size], tensor["datatype"], shape
        )
        offset += size
    return outputs
