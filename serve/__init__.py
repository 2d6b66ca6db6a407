"""bnmodel.serve: an Open Inference Protocol (KServe v2 / Triton) gRPC server on ONNX Runtime.

Layers: servicer.py (protobuf <-> domain) -> dataplane.py (no gRPC) -> model.py (ModelRunner) and
codec.py (tensors <-> numpy); errors.py holds the one error -> status mapping. client.py is the
client library. Importing this package imports nothing (the CLI registers cheaply).
"""
