"""The HTTP floor: uvicorn + httptools + uvloop with a raw ASGI app that parses the JSON request
and answers zeros of the right shape, without a model.

What an Open Inference Protocol server over HTTP/JSON in Python cannot beat: the HTTP parser, the
JSON parse of the request (orjson) and the JSON answer of "probabilities" [batch, 10].
Usage: python http_floor.py --port N [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn

NUM_CLASSES = 10
_READY = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]}


async def _body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":  # health and model readiness: always yes
        await send(_READY)
        await send({"type": "http.response.body", "body": b""})
        return
    request = orjson.loads(await _body(receive))
    rows = request["inputs"][0]["shape"][0]
    answer = orjson.dumps(
        {
            "model_name": "mlp",
            "model_version": "1",
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [rows, NUM_CLASSES],
                    "data": [0.0] * (rows * NUM_CLASSES),
                }
            ],
        }
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(answer)).encode()),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    args = p.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )


if __name__ == "__main__":
    main()
