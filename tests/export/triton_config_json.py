"""Parse a config.pbtxt with tritonclient's ModelConfig and print it as JSON.

Run in its own process (``python triton_config_json.py CONFIG``): tritonclient's generated
``inference`` package and bnmodel's clash in one process's protobuf descriptor pool.
"""

import sys

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

with open(sys.argv[1]) as f:
    config = text_format.Parse(f.read(), model_config_pb2.ModelConfig())
print(json_format.MessageToJson(config, preserving_proto_field_name=True))
