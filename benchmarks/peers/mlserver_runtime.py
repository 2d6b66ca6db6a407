"""MLServer 1.7 custom runtime: one ONNX Runtime session in the server process (parallel_workers 0).

Loaded by `mlserver start DIR` from benchmarks/.venvs/mlserver; DIR holds settings.json and
model-settings.json written by benchmarks/servers.py, whose "implementation" names this class and
whose parameters.uri is the ONNX file. Adaptive batching is set in model-settings.json
(max_batch_size, max_batch_time), not here.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

OUTPUT = "probabilities"


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        path = self.settings.parameters.uri
        self._session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        features = NumpyCodec.decode_input(payload.inputs[0])  # (batch, 64) float32
        (result,) = self._session.run([OUTPUT], {"features": features})
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(OUTPUT, result)],
        )
