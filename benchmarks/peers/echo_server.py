"""A bare grpc.aio Open Inference Protocol server that answers without running the model.

The floor of Python gRPC: it parses the request (the framework does), reads the batch size from the
input shape and returns a precomputed zero "probabilities" tensor of that size, so the bytes on the
wire match a real server's. Uses the service stubs shipped with tritonclient.
Usage: python echo_server.py --port N [--host 127.0.0.1] [--loop asyncio|uvloop]
(asyncio, the default, is serve_bench's floor; uvloop shows the floor on the loop our server uses.)
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

NUM_CLASSES = 10
OUTPUT = "probabilities"


class EchoServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self) -> None:
        self._zeros: dict[int, bytes] = {}

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=True)

    async def ModelInfer(self, request, context):
        batch = request.inputs[0].shape[0]
        raw = self._zeros.get(batch)
        if raw is None:
            raw = self._zeros[batch] = bytes(4 * NUM_CLASSES * batch)  # (batch, 10) FP32 zeros
        out = pb.ModelInferResponse.InferOutputTensor(
            name=OUTPUT, datatype="FP32", shape=[batch, NUM_CLASSES]
        )
        return pb.ModelInferResponse(
            model_name=request.model_name, id=request.id, outputs=[out], raw_output_contents=[raw]
        )


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(EchoServicer(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"echo server ready on {host}:{bound}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.host, args.port))
    else:
        asyncio.run(serve(args.host, args.port))
