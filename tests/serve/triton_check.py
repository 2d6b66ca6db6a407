"""Talk to a server with tritonclient.grpc (the off-the-shelf client), in its own process.

    python triton_check.py URL infer MODEL INPUTS.npy OUTPUTS.npz   # one request per array in file
    python triton_check.py URL infer-inputs MODEL INPUTS.npz OUTPUTS.npz   # keys "REQUEST/INPUT"
    python triton_check.py URL control MODEL                          # health, metadata, repository
    python triton_check.py URL states MODEL...            # readiness, index; metadata of 2 first

Prints JSON on stdout. Run by tests/serve/test_server.py with sys.executable: tritonclient's
generated `inference` package cannot share a process with ours.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype


def infer(client, model: str, inputs_path: str, outputs_path: str) -> dict:
    batches = np.load(inputs_path)
    results = {}
    for key in batches.files:
        x = batches[key]
        tensor = grpcclient.InferInput("features", list(x.shape), np_to_triton_dtype(x.dtype))
        tensor.set_data_from_numpy(x)
        response = client.infer(model, [tensor], request_id=f"req-{key}")
        for output in response.get_response(as_json=True)["outputs"]:
            results[f"{key}/{output['name']}"] = response.as_numpy(output["name"])
    np.savez(outputs_path, **results)
    return {"outputs": sorted(results)}


def requests(inputs_path: str) -> dict[str, dict[str, np.ndarray]]:
    """{request key: {input name: array}} from an npz keyed "REQUEST/INPUT"; string arrays
    (saved as numpy str, no pickle) become object arrays, which tritonclient sends as BYTES."""
    found: dict[str, dict[str, np.ndarray]] = {}
    with np.load(inputs_path) as arrays:
        for key in arrays.files:
            request, name = key.split("/", 1)
            x = arrays[key]
            found.setdefault(request, {})[name] = x.astype(object) if x.dtype.kind == "U" else x
    return found


def infer_inputs(client, model: str, inputs_path: str, outputs_path: str) -> dict:
    """One request per request key, with every input of it (several, BYTES among them)."""
    results = {}
    for key, arrays in requests(inputs_path).items():
        tensors = []
        for name, x in arrays.items():
            tensor = grpcclient.InferInput(name, list(x.shape), np_to_triton_dtype(x.dtype))
            tensor.set_data_from_numpy(x)
            tensors.append(tensor)
        response = client.infer(model, tensors, request_id=f"req-{key}")
        for output in response.get_response(as_json=True)["outputs"]:
            results[f"{key}/{output['name']}"] = response.as_numpy(output["name"])
    np.savez(outputs_path, **results)
    return {"outputs": sorted(results)}


def control(client, model: str) -> dict:
    metadata = client.get_model_metadata(model, as_json=True)
    config = client.get_model_config(model, as_json=True)["config"]
    before = [m["name"] for m in client.get_model_repository_index(as_json=True)["models"]]
    client.unload_model(model)
    ready_after_unload = client.is_model_ready(model)
    client.load_model(model)
    try:
        client.get_model_metadata("no-such-model")
        missing = "OK"
    except InferenceServerException as exc:
        missing = exc.status()
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server": client.get_server_metadata(as_json=True),
        "metadata": metadata,
        "config": config,
        "index": before,
        "ready_after_unload": ready_after_unload,
        "ready_after_load": client.is_model_ready(model),
        "missing_model_status": missing,
    }


def states(client, *models: str) -> dict:
    """ModelReady of each of ``models``, and the repository index as the server gives it."""
    index = client.get_model_repository_index(as_json=True)["models"]
    return {
        "ready": {m: client.is_model_ready(m) for m in models},
        "index": {m["name"]: [m.get("state", ""), m.get("reason", "")] for m in index},
        "metadata": {m: client.get_model_metadata(m, as_json=True) for m in models[:2]},
    }


if __name__ == "__main__":
    url, action, model, *paths = sys.argv[1:]
    client = grpcclient.InferenceServerClient(url)
    if action == "states":
        result = states(client, model, *paths)
    elif action == "infer-inputs":
        result = infer_inputs(client, model, *paths)
    else:
        result = infer(client, model, *paths) if action == "infer" else control(client, model)
    json.dump(result, sys.stdout)
