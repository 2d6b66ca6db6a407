"""Regenerate serve/proto/ from the .proto files in this folder: ``python protos/generate.py``.

Runs grpc_tools.protoc (grpcio-tools, pinned in pyproject.toml's test extra, because its bundled
protoc decides the generated text) for messages (``*_pb2.py``), type stubs (``*_pb2.pyi``) and
gRPC stubs (``*_pb2_grpc.py``), then rewrites protoc's absolute imports
(``import model_config_pb2``) into package-relative ones so the code imports as
``bnmodel.serve.proto``. tests/serve/test_protos.py checks that the committed files equal a fresh
run of :func:`generate`.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

__all__ = ["PROTO_DIR", "OUTPUT_DIR", "PROTO_FILES", "generate", "generated_files"]

PROTO_DIR = Path(__file__).resolve().parent
OUTPUT_DIR = PROTO_DIR.parent / "serve" / "proto"
PROTO_FILES = ("model_config.proto", "grpc_service.proto")

# `import model_config_pb2 as model__config__pb2` -> `from . import model_config_pb2 as ...`
_ABSOLUTE_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def _relative_imports(text: str) -> str:
    return _ABSOLUTE_IMPORT.sub(r"from . import \1\2", text)


def generated_files(out_dir: Path) -> dict[str, str]:
    """Run protoc into ``out_dir`` and return {file name: text} after the import rewrite."""
    from grpc_tools import protoc  # imported here: only needed when regenerating

    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_DIR / name) for name in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)} in {PROTO_DIR}")
    # model_config.proto declares no service: its empty *_pb2_grpc.py is left out.
    return {
        path.name: _relative_imports(path.read_text())
        for path in sorted(out_dir.iterdir())
        if path.suffix in (".py", ".pyi") and path.name != "model_config_pb2_grpc.py"
    }


def generate(output_dir: Path = OUTPUT_DIR) -> list[Path]:
    """Write the generated modules into ``output_dir`` (keeping its ``__init__.py``)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = generated_files(Path(tmp))
    written = []
    for name, text in files.items():
        path = output_dir / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    sys.exit(0)
