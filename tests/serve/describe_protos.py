"""Print a proto package as JSON: messages (file, fields: [number, type, label]), enums, methods.

Run as a script in its own process (``python describe_protos.py tritonclient`` or ``... bnmodel``):
tritonclient's generated modules and ours both define package ``inference`` and cannot share one
process's descriptor pool.
"""

from __future__ import annotations

import importlib
import json
import sys

MODULES = {
    "tritonclient": ("tritonclient.grpc.service_pb2", "tritonclient.grpc.model_config_pb2"),
    "bnmodel": ("bnmodel.serve.proto.grpc_service_pb2", "bnmodel.serve.proto.model_config_pb2"),
}


def _walk(message, out: dict) -> None:
    fields = {}
    for field in message.fields:
        kind = field.message_type or field.enum_type
        fields[field.name] = [
            field.number,
            kind.full_name if kind else field.type,
            "repeated" if field.is_repeated else "single",
        ]
    out[message.full_name] = {"file": message.file.name, "fields": fields}
    for nested in message.nested_types:
        _walk(nested, out)


def describe(package: str) -> dict:
    out: dict = {"messages": {}, "enums": {}, "methods": {}}
    for module_name in MODULES[package]:
        file = importlib.import_module(module_name).DESCRIPTOR
        for message in file.message_types_by_name.values():
            _walk(message, out["messages"])
        for enum in file.enum_types_by_name.values():
            out["enums"][enum.full_name] = {v.name: v.number for v in enum.values}
        for service in file.services_by_name.values():
            for method in service.methods:
                out["methods"][f"{service.full_name}/{method.name}"] = [
                    method.input_type.full_name,
                    method.output_type.full_name,
                    method.client_streaming,
                    method.server_streaming,
                ]
    return out


if __name__ == "__main__":
    json.dump(describe(sys.argv[1]), sys.stdout, indent=1, sort_keys=True)
