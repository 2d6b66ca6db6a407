"""The call sequences of Triton's Python client examples, run with tritonclient against a server.

    python triton_examples.py GRPC_URL HTTP_URL SCENARIO

Scenarios (each as the example of that name does it, written anew for these tests):
  shm-grpc, shm-http    simple_{grpc,http}_shm_client: register regions, infer with inputs and
                        outputs in shared memory, status, unregister, error cases
  string-grpc           simple_grpc_string_infer_client on simple_string
  int8-grpc             simple on INT8 (simple_grpc_infer_client with INT8 tensors)
  dtypes                every datatype typed (gRPC), raw (gRPC), JSON and binary (HTTP)
  errors                the error texts and codes Triton's clients check
  control-grpc REPO, control-http REPO    simple_{grpc,http}_model_control: load parameters
Prints JSON on stdout; the test asserts on it. Its own process: tritonclient's generated
protobuf modules cannot share one with ours.
"""

from __future__ import annotations

import base64
import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

DATATYPES = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


# InferTensorContents field of each datatype (8- to 32-bit integers share int/uint_contents)
_TYPED_FIELDS = {
    "BOOL": "bool_contents",
    "UINT64": "uint64_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _error(call) -> list:
    """[status, message] of the InferenceServerException ``call`` raises, or ["OK", ""]."""
    try:
        call()
    except InferenceServerException as exc:
        return [str(exc.status()), exc.message()]
    return ["OK", ""]


def _regions(client) -> list[dict]:
    """The registered regions as HTTP's list of objects (gRPC: the map's values)."""
    if isinstance(client, httpclient.InferenceServerClient):
        return client.get_system_shared_memory_status()
    status = client.get_system_shared_memory_status(as_json=True)
    return list(status.get("regions", {}).values())


def shared_memory(client, module) -> dict:
    """Register input and output regions, infer 'simple' through them, then the error cases."""
    tag = f"{os.getpid()}_{module.__name__.rsplit('.', 1)[-1]}"
    client.unregister_system_shared_memory()
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    size = a.nbytes
    inputs_shm = shm.create_shared_memory_region("input_data", f"/input_{tag}", size * 2)
    outputs_shm = shm.create_shared_memory_region("output_data", f"/output_{tag}", size * 2)
    try:
        shm.set_shared_memory_region(inputs_shm, [a])
        shm.set_shared_memory_region(inputs_shm, [b], offset=size)
        client.register_system_shared_memory("input_data", f"/input_{tag}", size * 2)
        client.register_system_shared_memory("output_data", f"/output_{tag}", size * 2)
        tensors = [module.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        tensors[0].set_shared_memory("input_data", size)
        tensors[1].set_shared_memory("input_data", size, offset=size)
        outputs = [module.InferRequestedOutput(n) for n in ("OUTPUT0", "OUTPUT1")]
        outputs[0].set_shared_memory("output_data", size)
        outputs[1].set_shared_memory("output_data", size, offset=size)
        result = client.infer("simple", tensors, outputs=outputs)
        sums, diffs = (
            shm.get_contents_as_numpy(outputs_shm, np.int32, [1, 16], offset=o) for o in (0, size)
        )
        output0 = result.get_output("OUTPUT0")
        region = (
            output0["parameters"]["shared_memory_region"]
            if isinstance(output0, dict)
            else output0.parameters["shared_memory_region"].string_param
        )
        names = sorted(r["name"] for r in _regions(client))
        errors = {
            "twice": _error(
                lambda: client.register_system_shared_memory("input_data", f"/input_{tag}", size)
            ),
            "no key": _error(
                lambda: client.register_system_shared_memory("x", "/no_such_key_bnmodel", 64)
            ),
            "too big": _error(
                lambda: client.register_system_shared_memory("y", f"/input_{tag}", size * 4)
            ),
            "unknown status": _error(lambda: client.get_system_shared_memory_status("nope")),
        }
        bad = [module.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        bad[0].set_shared_memory("input_data", size, offset=size * 2)
        bad[1].set_shared_memory("nope", size)
        errors["out of range"] = _error(lambda: client.infer("simple", bad))
        bad[0] = module.InferInput("INPUT0", [1, 16], "INT32")
        bad[0].set_shared_memory("input_data", size)
        errors["unknown region"] = _error(lambda: client.infer("simple", bad))
        client.unregister_system_shared_memory("input_data")
        after_one = [r["name"] for r in _regions(client)]
        client.unregister_system_shared_memory()
        after_all = [r["name"] for r in _regions(client)]
        return {
            "sums_ok": bool((sums == a + b).all()),
            "diffs_ok": bool((diffs == a - b).all()),
            "region_param": region,
            "regions": names,
            "errors": errors,
            "after_one": after_one,
            "after_all": after_all,
        }
    finally:
        shm.destroy_shared_memory_region(inputs_shm)
        shm.destroy_shared_memory_region(outputs_shm)


def add_sub(client, model: str, dtype, datatype: str) -> dict:
    a = np.arange(16, dtype=dtype).reshape(1, 16)
    b = np.ones((1, 16), dtype=dtype)
    if datatype == "BYTES":
        a, b = (
            np.array([str(int(v)) for v in x.ravel()], dtype=object).reshape(1, 16) for x in (a, b)
        )
    tensors = [grpcclient.InferInput(n, [1, 16], datatype) for n in ("INPUT0", "INPUT1")]
    tensors[0].set_data_from_numpy(a)
    tensors[1].set_data_from_numpy(b)
    result = client.infer(model, tensors)
    out0, out1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    if datatype == "BYTES":
        out0, out1 = (np.array([int(v) for v in x.ravel()]).reshape(1, 16) for x in (out0, out1))
        a, b = (np.array([int(v) for v in x.ravel()]).reshape(1, 16) for x in (a, b))
    return {"sum_ok": bool((out0 == a + b).all()), "diff_ok": bool((out1 == a - b).all())}


def _example(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([["a", "bc", "", "ü"], ["1", "2", "3", "4"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True, False], [False, False, True, True]])
    dtype = triton_to_np_dtype(datatype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.array([[info.min, 0, 1, info.max // 2], [2, 3, 4, 5]], dtype=dtype)
    return np.array([[-1.5, 0, 0.25, 1e3], [2, 3, 4, 5]], dtype=dtype)


def _expected(x: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return x
    if datatype == "BOOL":
        return x | x
    with np.errstate(over="ignore"):
        return x + x  # wraps as ONNX Runtime does


def _same(got: np.ndarray, expected: np.ndarray, datatype: str) -> bool:
    if datatype == "BYTES":
        got = np.array([v.decode() if isinstance(v, bytes) else v for v in got.ravel()])
        return got.tolist() == expected.ravel().tolist()
    return got.shape == expected.shape and bool((got == expected).all())


def dtypes(grpc_client, http_client) -> dict:
    """identity_<DTYPE>: each datatype typed and raw over gRPC, JSON and binary over HTTP."""
    found = {}
    for datatype in DATATYPES:
        x = _example(datatype)
        model = f"identity_{datatype}"
        results = {}
        for way in ("grpc-raw", "grpc-typed", "http-json", "http-binary"):
            module = grpcclient if way.startswith("grpc") else httpclient
            client = grpc_client if way.startswith("grpc") else http_client
            tensor = module.InferInput("INPUT0", list(x.shape), datatype)
            if way == "grpc-typed":
                field = _TYPED_FIELDS.get(datatype) or (
                    "uint_contents" if datatype.startswith("U") else "int_contents"
                )
                if datatype == "FP16":  # no typed field: the protocol sends FP16 raw only
                    results[way] = "no typed field"
                    continue
                values = x.ravel().tolist()
                if datatype == "BYTES":
                    values = [v.encode() for v in values]
                getattr(tensor._get_tensor().contents, field).extend(values)
                tensor._get_tensor().datatype = datatype
            elif way == "http-json":
                if datatype == "FP16":
                    tensor.set_data_from_numpy(x, binary_data=True)  # JSON has no FP16
                else:
                    tensor.set_data_from_numpy(x, binary_data=False)
            elif way == "http-binary":
                tensor.set_data_from_numpy(x, binary_data=True)
            else:
                tensor.set_data_from_numpy(x)
            outputs = None
            if way.startswith("http"):
                binary = way == "http-binary" or datatype == "FP16"
                outputs = [
                    httpclient.InferRequestedOutput(n, binary_data=binary)
                    for n in ("OUTPUT0", "OUTPUT1")
                ]
            try:
                result = client.infer(model, [tensor], outputs=outputs)
                ok = _same(result.as_numpy("OUTPUT0"), x, datatype) and _same(
                    result.as_numpy("OUTPUT1"), _expected(x, datatype), datatype
                )
                results[way] = "ok" if ok else "wrong values"
            except InferenceServerException as exc:
                results[way] = f"{exc.status()}: {exc.message()}"
        found[datatype] = results
    return found


def control(client, module, repository: str) -> dict:
    """simple_{grpc,http}_model_control: load with a config override, a bad one, and files."""
    name = "simple"
    as_json = {} if module is httpclient else {"as_json": True}
    found = {}
    found["unknown model"] = _error(lambda: client.load_model("wrong_model_name"))
    client.load_model(name, config=json.dumps({"max_batch_size": 4}))
    config = client.get_model_config(name, **as_json)
    found["max_batch_size"] = int(config.get("config", config)["max_batch_size"])
    for case, text in {
        "malformed": '{"max_batch_size": ',
        "backend": '{"backend": "tensorrt"}',
        "unknown field": '{"max_batchsize": 4}',
        "bad dims": json.dumps(
            {"input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [3]},
                       {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [3]}],
             "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [3]},
                        {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [3]}]}
        ),
    }.items():  # fmt: skip
        found[case] = _error(lambda text=text: client.load_model(name, config=text))
    found["still ready"] = client.is_model_ready(name)
    with open(f"{repository}/simple_int8/1/model.onnx", "rb") as f:
        int8 = f.read()
    override = {
        "max_batch_size": 8,
        "input": [
            {"name": n, "data_type": "TYPE_INT8", "dims": [16]} for n in ("INPUT0", "INPUT1")
        ],
        "output": [
            {"name": n, "data_type": "TYPE_INT8", "dims": [16]} for n in ("OUTPUT0", "OUTPUT1")
        ],
    }
    client.load_model(name, config=json.dumps(override), files={"file:2/model.onnx": int8})
    metadata = client.get_model_metadata(name, **as_json)
    found["file versions"] = metadata["versions"]
    found["file datatype"] = metadata["inputs"][0]["datatype"]
    found["long file path"] = _error(  # one component over NAME_MAX: refused, server up
        lambda: client.load_model(name, config="{}", files={"file:" + "A" * 256: b"a"})
    )
    found["files without config"] = _error(
        lambda: client.load_model(name, files={"file:1/model.onnx": int8})
    )
    client.load_model(name)  # back to the repository's
    found["reloaded datatype"] = client.get_model_metadata(name, **as_json)["inputs"][0]["datatype"]
    return found


def errors(grpc_client, http_client) -> dict:
    a = np.zeros((1, 16), dtype=np.int32)
    tensors = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for t in tensors:
        t.set_data_from_numpy(a)
    typed = grpcclient.InferInput("INPUT0", [1, 16], "INT32")
    typed._get_tensor().contents.int_contents.extend([0] * 16)
    raw = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    raw.set_data_from_numpy(a)
    handle = base64.b64encode(b"a CUDA IPC handle")
    return {
        "unknown model grpc": _error(lambda: grpc_client.infer("nope", tensors)),
        "unknown model http": _error(lambda: http_client.get_model_metadata("nope")),
        "bad version grpc": _error(lambda: grpc_client.infer("simple", tensors, "abc")),
        "bad version http": _error(lambda: http_client.get_model_metadata("simple", "abc")),
        "raw and typed": _error(lambda: grpc_client.infer("simple", [typed, raw])),
        # the shared-memory examples clear CUDA regions before they start
        "cuda unregister grpc": grpc_client.unregister_cuda_shared_memory() is None,
        "cuda unregister http": http_client.unregister_cuda_shared_memory() is None,
        "cuda status grpc": grpc_client.get_cuda_shared_memory_status(as_json=True),
        "cuda status http": http_client.get_cuda_shared_memory_status(),
        "cuda register grpc": _error(
            lambda: grpc_client.register_cuda_shared_memory("gpu", handle, 0, 64)
        ),
        "cuda register http": _error(
            lambda: http_client.register_cuda_shared_memory("gpu", handle, 0, 64)
        ),
        "extensions": grpc_client.get_server_metadata(as_json=True)["extensions"],
        "http extensions": http_client.get_server_metadata()["extensions"],
    }


if __name__ == "__main__":
    grpc_url, http_url, scenario, *rest = sys.argv[1:]
    grpc_client = grpcclient.InferenceServerClient(grpc_url)
    http_client = httpclient.InferenceServerClient(http_url.removeprefix("http://"))
    if scenario == "shm-grpc":
        result = shared_memory(grpc_client, grpcclient)
    elif scenario == "shm-http":
        result = shared_memory(http_client, httpclient)
    elif scenario == "string-grpc":
        result = add_sub(grpc_client, "simple_string", np.int32, "BYTES")
    elif scenario == "int8-grpc":
        result = add_sub(grpc_client, "simple_int8", np.int8, "INT8")
    elif scenario == "control-grpc":
        result = control(grpc_client, grpcclient, *rest)
    elif scenario == "control-http":
        result = control(http_client, httpclient, *rest)
    elif scenario == "dtypes":
        result = dtypes(grpc_client, http_client)
    else:
        result = errors(grpc_client, http_client)
    json.dump(result, sys.stdout)
