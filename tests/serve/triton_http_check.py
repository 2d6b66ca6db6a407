"""Talk to a server with tritonclient.http (the off-the-shelf client), in its own process.

    python triton_http_check.py URL infer MODEL INPUTS.npz OUTPUTS.npz json|binary
    python triton_http_check.py URL infer-inputs MODEL INPUTS.npz OUTPUTS.npz json|binary
    python triton_http_check.py URL control MODEL

Prints JSON on stdout; the tritonclient.grpc twin is triton_check.py (infer-inputs: the npz
format of its ``requests``).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from triton_check import requests
from tritonclient.utils import InferenceServerException, np_to_triton_dtype


def infer(client, model: str, inputs_path: str, outputs_path: str, mode: str) -> dict:
    binary = mode == "binary"
    batches = np.load(inputs_path)
    results = {}
    for key in batches.files:
        x = batches[key]
        tensor = httpclient.InferInput("features", list(x.shape), np_to_triton_dtype(x.dtype))
        tensor.set_data_from_numpy(x, binary_data=binary)
        outputs = [
            httpclient.InferRequestedOutput(name, binary_data=binary)
            for name in ("logits", "probabilities")
        ]
        response = client.infer(model, [tensor], outputs=outputs, request_id=f"req-{key}")
        for output in response.get_response()["outputs"]:
            results[f"{key}/{output['name']}"] = response.as_numpy(output["name"])
    np.savez(outputs_path, **results)
    return {"outputs": sorted(results)}


def infer_inputs(client, model: str, inputs_path: str, outputs_path: str, mode: str) -> dict:
    """One request per request key with every input of it; BYTES as JSON strings or binary."""
    results = {}
    for key, arrays in requests(inputs_path).items():
        tensors = []
        for name, x in arrays.items():
            tensor = httpclient.InferInput(name, list(x.shape), np_to_triton_dtype(x.dtype))
            tensor.set_data_from_numpy(x, binary_data=mode == "binary")
            tensors.append(tensor)
        response = client.infer(model, tensors, request_id=f"req-{key}")
        for output in response.get_response()["outputs"]:
            results[f"{key}/{output['name']}"] = response.as_numpy(output["name"])
    np.savez(outputs_path, **results)
    return {"outputs": sorted(results)}


def control(client, model: str) -> dict:
    metadata = client.get_model_metadata(model)
    config = client.get_model_config(model)
    before = [m["name"] for m in client.get_model_repository_index()]
    client.unload_model(model)
    ready_after_unload = client.is_model_ready(model)
    client.load_model(model)
    try:
        client.get_model_metadata("no-such-model")
        missing = "OK"
    except InferenceServerException as exc:
        missing = f"{exc.status()} {exc.message()}"
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server": client.get_server_metadata(),
        "metadata": metadata,
        "config": config,
        "stats": client.get_inference_statistics(model),
        "index": before,
        "ready_after_unload": ready_after_unload,
        "ready_after_load": client.is_model_ready(model),
        "missing_model": missing,
    }


if __name__ == "__main__":
    url, action, model, *rest = sys.argv[1:]
    client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    if action == "infer-inputs":
        result = infer_inputs(client, model, *rest)
    else:
        result = infer(client, model, *rest) if action == "infer" else control(client, model)
    json.dump(result, sys.stdout)
