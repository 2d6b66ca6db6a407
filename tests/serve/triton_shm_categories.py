"""A raw-row request whose every input sits in system shared memory, sent with tritonclient.grpc.

    python triton_shm_categories.py URL MODEL '{"color": [...], "size": [...]}'

features (zeros, FP32 [N, 3]) and one BYTES [N, 1] tensor per column are written into one
region, registered, and inferred through. Prints {"ok": true, "rows": N} on stdout. Run by
tests/serve/test_category_metrics.py in a process of its own (tritonclient's protobuf modules).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import serialize_byte_tensor


def main(url: str, model: str, batch: dict[str, list[str]]) -> dict:
    rows = len(next(iter(batch.values())))
    arrays = {"features": np.zeros((rows, 3), np.float32)}
    arrays |= {c: np.array(v, dtype=object).reshape(-1, 1) for c, v in batch.items()}
    blobs = {
        n: a.tobytes() if a.dtype != object else serialize_byte_tensor(a).item()
        for n, a in arrays.items()
    }
    size = sum(len(b) for b in blobs.values())
    key = f"/bnmodel_categories_{os.getpid()}"
    client = grpcclient.InferenceServerClient(url)
    region = shm.create_shared_memory_region("categories_in", key, size)
    try:
        tensors, offset = [], 0
        for name, array in arrays.items():
            datatype = "FP32" if name == "features" else "BYTES"
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            shm.set_shared_memory_region(region, [np.frombuffer(blobs[name], np.uint8)], offset)
            tensor.set_shared_memory("categories_in", len(blobs[name]), offset=offset)
            tensors.append(tensor)
            offset += len(blobs[name])
        client.register_system_shared_memory("categories_in", key, size)
        try:
            result = client.infer(model, tensors)
        finally:
            client.unregister_system_shared_memory("categories_in")
        return {"ok": True, "rows": int(result.as_numpy("probabilities").shape[0])}
    finally:
        shm.destroy_shared_memory_region(region)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))))
