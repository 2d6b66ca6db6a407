"""KServe 0.21 ModelServer with a minimal ONNX Runtime model (runs in benchmarks/.venvs/kserve).

Usage: python kserve_model.py --model_path FILE.onnx --model_name mlp --grpc_port N --http_port M
KServe 0.21 has no host option: its gRPC server binds "[::]:port" and its REST server "0.0.0.0".
To keep the benchmark on loopback we rewrite those two addresses here, in this launcher only,
before the server starts; nothing else of KServe is changed.
"""

from __future__ import annotations

import argparse

import grpc.aio
import kserve
import numpy as np
import onnxruntime as ort
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse

LOOPBACK = "127.0.0.1"


class OnnxModel(kserve.Model):
    """Open Inference Protocol v2 model: one ORT session with one intra-op thread."""

    def __init__(self, name: str, path: str, output: str):
        super().__init__(name)
        self.path = path
        self.output = output
        self.session: ort.InferenceSession | None = None

    def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        features = payload.inputs[0].as_numpy()  # (batch, 64) float32
        (result,) = self.session.run([self.output], {"features": features})
        out = InferOutput(name=self.output, shape=list(result.shape), datatype="FP32")
        out.set_data_from_numpy(np.ascontiguousarray(result), binary_data=True)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[out],
            from_grpc=payload.from_grpc,
            use_binary_outputs=True,
        )


def _bind_loopback() -> None:
    """Make every gRPC port and the uvicorn server in this process listen on 127.0.0.1 only."""
    original_server = grpc.aio.server

    def loopback_server(*args, **kwargs):
        server = original_server(*args, **kwargs)
        add = server.add_insecure_port
        server.add_insecure_port = lambda addr: add(LOOPBACK + ":" + addr.rsplit(":", 1)[1])
        return server

    grpc.aio.server = loopback_server
    original_config = uvicorn.Config.__init__

    def loopback_config(self, *args, **kwargs):
        kwargs["host"] = LOOPBACK
        original_config(self, *args, **kwargs)

    uvicorn.Config.__init__ = loopback_config


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--output", default="probabilities")
    args, _ = parser.parse_known_args()
    _bind_loopback()
    model = OnnxModel(args.model_name, args.model_path, args.output)
    model.load()
    kserve.ModelServer().start([model])
