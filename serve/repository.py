"""Model repositories: where models and their config.pbtxt come from.

Triton layout (what ``bnmodel export --repository`` writes)::

    DIR/NAME/config.pbtxt          text-format inference.ModelConfig
    DIR/NAME/VERSION/model.onnx    VERSION is a positive integer

:class:`ModelRepository` scans such a folder; :class:`SingleModelRepository` is the in-memory
one-model repository behind ``bnmodel serve --model FILE.onnx``, its config derived from the
ONNX file. Both only read files: sessions are created by the data plane.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format, text_format

from bnmodel.contract import parameters_from_metadata

from .codec import datatype_from_ort
from .errors import InvalidInputError, ModelLoadError, ModelNotFoundError
from .proto import model_config_pb2
from .settings import DEFAULT_MAX_BATCH_SIZE

log = logging.getLogger("bnmodel.serve")

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_MODEL_FILE",
    "ONNX_PLATFORM",
    "MAX_NAME_LENGTH",
    "ModelSource",
    "ModelRepository",
    "SingleModelRepository",
    "parse_config",
    "select_versions",
    "check_model_name",
    "config_from_onnx",
    "default_model_name",
    "json_parameter",
    "cause",
    "LoadOverride",
    "override_source",
    "load_override",
]

CONFIG_FILE = "config.pbtxt"
DEFAULT_MODEL_FILE = "model.onnx"
ONNX_PLATFORM = "onnxruntime_onnx"
MAX_NAME_LENGTH = 255  # one path component on common file systems


@dataclass(frozen=True)
class ModelSource:
    """One model as the repository describes it: config and the model file of each version."""

    name: str
    config: model_config_pb2.ModelConfig
    versions: dict[str, Path]  # "1" -> .../NAME/1/model.onnx, only the versions to serve


def check_model_name(name: str) -> str:
    """Refuse names that are empty, too long, or could leave the repository folder."""
    if not name:
        raise InvalidInputError("model name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"model name is {len(name)} characters long, at most {MAX_NAME_LENGTH} allowed"
        )
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise InvalidInputError(f"model name {name[:64]!r} is not a plain folder name")
    return name


def parse_config(text: str, *, source: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text; ModelLoadError names ``source`` and the parser's line:column."""
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ModelLoadError(f"{source}: invalid model configuration: {exc}") from None


def select_versions(available: list[int], policy: model_config_pb2.ModelVersionPolicy) -> list[int]:
    """The versions a version policy serves (default: the latest one), ascending."""
    available = sorted(available)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return available
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in available if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return available[-max(count, 1) :]


class ModelRepository:
    """A Triton-layout model repository folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {root} is not a folder")
        self._skipped: set[Path] = set()  # folders whose skipping was logged once

    def names(self) -> list[str]:
        """Model folders, sorted: those holding a config.pbtxt."""
        found = []
        for p in self.root.iterdir():
            if p.is_dir() and not p.name.startswith("."):
                if (p / CONFIG_FILE).is_file():
                    found.append(p.name)
                else:
                    self._skip(p, f"no {CONFIG_FILE} in it")
        return sorted(found)

    def _skip(self, folder: Path, why: str) -> None:
        if folder not in self._skipped:
            self._skipped.add(folder)
            where = folder.relative_to(self.root.parent)
            log.warning("skipped %s/: %s", where, why, extra={"once": True})  # worker 0 only

    def _model_dir(self, name: str) -> Path:
        check_model_name(name)
        folder = (self.root / name).resolve()
        # A symlinked model folder must still lie inside the repository.
        if folder.parent != self.root or not (folder / CONFIG_FILE).is_file():
            raise ModelNotFoundError(
                f"model {name[:64]!r} is not in the repository {self.root.name}/ "
                f"(models: {', '.join(self.names()) or 'none'})"
            )
        return folder

    def source(self, name: str) -> ModelSource:
        """Read ``name``'s config.pbtxt and find its version files."""
        folder = self._model_dir(name)
        try:
            text = (folder / CONFIG_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            raise ModelLoadError(f"{name}/{CONFIG_FILE}: cannot read it ({cause(exc)})") from None
        config = parse_config(text, source=f"{name}/{CONFIG_FILE}")
        if config.name and config.name != name:
            raise ModelLoadError(
                f"{name}/{CONFIG_FILE}: name {config.name!r} does not match its folder {name!r}"
            )
        config.name = name
        if config.platform and config.platform != ONNX_PLATFORM:
            raise ModelLoadError(
                f"{name}/{CONFIG_FILE}: platform {config.platform!r} is not supported; "
                f"expected {ONNX_PLATFORM!r}"
            )
        config.platform = ONNX_PLATFORM
        filename = config.default_model_filename or DEFAULT_MODEL_FILE
        if filename in (".", "..") or "/" in filename or "\\" in filename or "\0" in filename:
            raise ModelLoadError(
                f"{name}/{CONFIG_FILE}: default_model_filename {filename[:64]!r} is not a plain "
                "file name; the model file must lie in the version folder"
            )
        return ModelSource(name, config, self._versions(folder, filename, config))

    def _versions(self, folder: Path, filename: str, config) -> dict[str, Path]:
        try:  # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
            available = []
            for p in folder.iterdir():
                if not p.is_dir() or p.name.startswith("."):
                    continue
                if not (p.name.isascii() and p.name.isdigit()):
                    self._skip(p, "not a version folder (a version is a whole number)")
                elif not (p / filename).is_file():
                    self._skip(p, f"version folder without {filename}")
                else:
                    available.append(int(p.name))
        except OSError as exc:
            raise ModelLoadError(
                f"{folder.name}/: cannot list its versions ({cause(exc)})"
            ) from None
        chosen = select_versions(available, config.version_policy)
        if not chosen:
            raise ModelLoadError(
                f"{folder.name}: no version folder (1/, 2/, ...) holding {filename} "
                f"matches the version policy (found versions: {sorted(available) or 'none'})"
            )
        return {str(v): _inside(folder, folder / str(v) / filename) for v in chosen}


def cause(exc: BaseException) -> str:
    """An exception in a few words for a one-line message: "UnicodeDecodeError: ..."."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def _inside(folder: Path, path: Path) -> Path:
    """``path`` resolved; ModelLoadError when a symlink takes it out of the model ``folder``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(folder):
        shown = path.relative_to(folder.parent)
        raise ModelLoadError(
            f"{shown} resolves to a file outside the model folder {folder.name}/ "
            "(a symlink out of the repository); copy the file in instead"
        )
    return resolved


class SingleModelRepository:
    """One ONNX file served as model ``name`` version 1, its config derived from the file."""

    def __init__(
        self, path: Path, name: str | None = None, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    ) -> None:
        self.path = Path(path).resolve()
        if not self.path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        self.name = check_model_name(name or default_model_name(self.path))
        self.max_batch_size = max_batch_size
        self._config: model_config_pb2.ModelConfig | None = None

    def names(self) -> list[str]:
        return [self.name]

    def source(self, name: str) -> ModelSource:
        if name != self.name:
            raise ModelNotFoundError(f"model {name[:64]!r} is not served here (model: {self.name})")
        if self._config is None:
            self._config = config_from_onnx(self.path, self.name, self.max_batch_size)
        config = model_config_pb2.ModelConfig()
        config.CopyFrom(self._config)
        return ModelSource(self.name, config, {"1": self.path})


def default_model_name(path: Path) -> str:
    """File stem, or NAME for a repository-layout path NAME/VERSION/model.onnx."""
    if path.stem == "model" and path.parent.name.isdigit():
        return path.parent.parent.name
    return path.stem


def config_from_onnx(path: Path, name: str, max_batch_size: int) -> model_config_pb2.ModelConfig:
    """A config.pbtxt equivalent for an ONNX file following the bnmodel contract.

    Inputs/outputs come from the graph (a symbolic first axis is the batch axis), parameters from
    its ``bnmodel.*`` metadata_props (the data contract, ``bnmodel.contract``).
    """
    from .session import inspect_onnx  # ORT is needed to read the graph's signature

    signature = inspect_onnx(path)
    # Batched when every tensor's first axis is symbolic (the contract's "batch" axis).
    tensors = signature.inputs + signature.outputs
    batched = all(shape and shape[0] is None for _, _, shape in tensors)
    config = model_config_pb2.ModelConfig(
        name=name, platform=ONNX_PLATFORM, max_batch_size=max_batch_size if batched else 0
    )
    groups = ((signature.inputs, config.input.add), (signature.outputs, config.output.add))
    for group, add in groups:
        for tensor_name, ort_type, shape in group:
            try:
                data_type = model_config_pb2.DataType.Value(datatype_from_ort(ort_type).config_name)
            except InvalidInputError as exc:
                raise ModelLoadError(f"{path.name}: tensor {tensor_name!r}: {exc}") from None
            dims = [-1 if d is None else d for d in (shape[1:] if batched else shape)]
            add(name=tensor_name, data_type=data_type, dims=dims)
    for key, value in parameters_from_metadata(signature.metadata).items():
        config.parameters[key].string_value = value
    return config


@dataclass(frozen=True)
class LoadOverride:
    """RepositoryModelLoad's parameters: a ModelConfig in Triton's JSON form, and files
    ("1/model.onnx" -> bytes) that make up the model folder to load instead of the repository's."""

    config: str | None = None
    files: tuple[tuple[str, bytes], ...] = ()


def load_override(name: str, parameters: dict[str, tuple[str, object]]) -> LoadOverride | None:
    """RepositoryModelLoad's parameters ({name: (kind, value)}, kind "string", "bytes", ...)
    -> the override, or None without config or file: parameters (others are ignored, as Triton
    passes them on)."""
    config, files = None, []
    for key, (kind, value) in parameters.items():
        if key == "config":
            if kind != "string":
                raise InvalidInputError(
                    f"RepositoryModelLoad {name!r}: parameter 'config' must be a string (the "
                    f"model configuration in JSON), got {kind or 'no value'}"
                )
            config = value
        elif key.startswith("file:"):
            if kind != "bytes":
                raise InvalidInputError(
                    f"RepositoryModelLoad {name!r}: parameter {key[:64]!r} must hold the file's "
                    f"bytes, got {kind or 'no value'}"
                )
            files.append((key.removeprefix("file:"), value))
    if config is None and not files:
        return None
    return LoadOverride(config, tuple(files))


def _override_config(name: str, text: str, base: model_config_pb2.ModelConfig | None):
    where = f"RepositoryModelLoad {name!r}: parameter 'config'"
    try:
        config = json_format.Parse(text, model_config_pb2.ModelConfig())
    except json_format.ParseError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(f"{where} is not a model configuration in JSON: {first}") from None
    if config.name and config.name != name:
        raise InvalidInputError(f"{where}: name {config.name!r} does not match the model {name!r}")
    if config.backend not in ("", "onnxruntime") or config.platform not in ("", ONNX_PLATFORM):
        raise InvalidInputError(
            f"{where}: backend {config.backend!r} / platform {config.platform!r} is not "
            f"supported; this server runs ONNX models (backend 'onnxruntime', platform "
            f"{ONNX_PLATFORM!r})"
        )
    if base is not None and not config.input and not config.output:
        # As Triton completes a config from the model: tensors the override leaves out
        config.input.extend(base.input)
        config.output.extend(base.output)
    config.name, config.platform = name, ONNX_PLATFORM
    return config


def override_source(
    name: str, override: LoadOverride, base: ModelSource | None, folder: Path
) -> ModelSource:
    """The model to load for ``override``: its config (checked: INVALID_ARGUMENT naming what is
    wrong) and, with files, version folders written under the empty ``folder``."""
    if override.files and override.config is None:
        raise InvalidInputError(
            f"RepositoryModelLoad {name!r}: 'file:' parameters need a 'config' parameter too "
            "(the files form the whole model folder)"
        )
    config = _override_config(name, override.config, None if override.files else base.config)
    if not override.files:
        return ModelSource(name, config, base.versions)
    filename = config.default_model_filename or DEFAULT_MODEL_FILE
    for path, content in override.files:
        version, _, file = path.partition("/")
        if (
            not (version.isascii() and version.isdigit())
            or file in ("", ".", "..")
            or "/" in file
            or max(len(version), len(file.encode())) > MAX_NAME_LENGTH
        ):  # "Invalid file path": Triton's words
            raise InvalidInputError(
                f"RepositoryModelLoad {name!r}: Invalid file path: parameter "
                f"'file:{path[:64]}' must name VERSION/FILE, each at most {MAX_NAME_LENGTH} bytes "
                "(for example 'file:1/model.onnx')"
            )
        (folder / version).mkdir(exist_ok=True)
        (folder / version / file).write_bytes(content)
    available = [int(v.name) for v in folder.iterdir() if (v / filename).is_file()]
    chosen = select_versions(available, config.version_policy)
    if not chosen:
        raise InvalidInputError(
            f"RepositoryModelLoad {name!r}: no 'file:VERSION/{filename}' parameter matches the "
            f"version policy (versions given: {sorted(available) or 'none'})"
        )
    return ModelSource(name, config, {str(v): folder / str(v) / filename for v in chosen})


def json_parameter(config: model_config_pb2.ModelConfig, key: str) -> list[str] | None:
    """A JSON-list parameter ("class_labels", "feature_names") or None when absent or not a list."""
    if key not in config.parameters:
        return None
    try:
        value = json.loads(config.parameters[key].string_value)
    except ValueError:
        return None
    return [str(v) for v in value] if isinstance(value, list) else None
