"""The data plane: models in memory, health, metadata, repository control and inference.

Knows nothing of gRPC: takes and returns domain objects, raises domain errors (serve/errors.py).
Runs on the server's event loop; blocking work (file reads, session creation, model runs) goes
to the executor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnmodel import __version__

from .batching import BatchingOptions, set_request_timeout
from .codec import encode_raw
from .errors import InvalidInputError, ModelLoadError, ModelNotFoundError, ServeError
from .model import Model, ModelVersion, load_model
from .repository import (
    MAX_NAME_LENGTH,
    LoadOverride,
    ModelRepository,
    SingleModelRepository,
    cause,
    override_source,
)
from .session import SessionFactory
from .shared_memory import SharedMemoryRegistry
from .statistics import VersionStats
from .validation import (
    InferRequest,
    Parameter,
    check_finite,
    check_inputs,
    check_outputs,
    check_parameters,
    quote,
)

__all__ = [
    "SERVER_NAME",
    "EXTENSIONS",
    "MAX_ECHOED_ID",
    "ServerMetadata",
    "IndexEntry",
    "InferResponse",
    "DataPlane",
]

log = logging.getLogger("bnmodel.serve")
ONCE = {"once": True}  # a startup event every worker process sees alike: worker 0 logs it

SERVER_NAME = "bnmodel"
# Protocol extensions this server implements (ServerMetadata.extensions).
EXTENSIONS = (
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "system_shared_memory",
)
MAX_ECHOED_ID = 256  # a request id is echoed back truncated to this many characters


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str  # "READY" or "UNAVAILABLE"
    reason: str = ""


@dataclass(frozen=True)
class SharedOutput:
    """An output written into a shared-memory region instead of the response."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    region: str
    byte_size: int  # bytes written


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: tuple[tuple[str, np.ndarray], ...]  # (output name, [batch, ...] array), in order
    shared: tuple[SharedOutput, ...] = ()  # outputs the client asked for in shared memory


class DataPlane:
    """Loaded models and every operation of the protocol on them."""

    def __init__(
        self,
        repository: ModelRepository | SingleModelRepository,
        factory: SessionFactory,
        executor: Executor,
        batching: BatchingOptions | None = None,
    ):
        self.repository = repository
        self.factory = factory
        self.executor = executor
        self.batching = batching or BatchingOptions()
        self._models: dict[str, Model] = {}
        self._failures: dict[str, str] = {}  # model name -> why its last load failed
        self._load_locks: dict[str, asyncio.Lock] = {}
        self.shared_memory = SharedMemoryRegistry()
        self.reject_non_finite = False  # --reject-non-finite: NaN/inf inputs are refused
        # --metrics-port: count categorical cells in the "other" slot (a hash per cell, paid
        # only where /metrics shows the counts)
        self.count_categories = False
        self._ready = False

    # -- health and metadata ------------------------------------------------------------------

    def ready(self) -> bool:
        """Startup loading is done and the server is not draining."""
        return self._ready

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def model_ready(self, name: str, version: str = "") -> bool:
        model = self._models.get(name)
        return model is not None and (not version or version in model.versions)

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, __version__, EXTENSIONS)

    @property
    def models(self) -> dict[str, Model]:
        """Loaded models by name (a snapshot; do not mutate)."""
        return dict(self._models)

    def model(self, name: str, version: str = "") -> tuple[Model, ModelVersion]:
        """A loaded model and version ("" = latest), or the error a client should see."""
        model = self._models.get(name)
        if model is None:
            raise self._not_found(name)
        return model, model.version(version)

    def _not_found(self, name: str) -> ServeError:
        if not name:
            return InvalidInputError("model name is empty")
        if len(name) > MAX_NAME_LENGTH:
            return InvalidInputError(
                f"model name is {len(name)} characters long, at most {MAX_NAME_LENGTH} allowed"
            )
        # "Request for unknown model: 'NAME' ...": Triton's words, which its clients look for
        if name in self._failures:
            return ModelNotFoundError(
                f"Request for unknown model: {quote(name)} is not loaded: failed to load: "
                f"{self._failures[name]}"
            )
        loaded = ", ".join(map(quote, sorted(self._models))) or "none"
        return ModelNotFoundError(
            f"Request for unknown model: {quote(name)} is not found; loaded models: {loaded}"
        )

    # -- repository -----------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        entries = []
        for name in sorted(set(self.repository.names()) | set(self._models)):
            model = self._models.get(name)
            if model is not None:
                entries += [IndexEntry(name, v, "READY") for v in model.versions]
            elif not ready_only:
                reason = self._failures.get(name, "not loaded")
                entries.append(IndexEntry(name, "", "UNAVAILABLE", reason))
        return entries

    def _known(self, name: str) -> None:
        """NotFound (or InvalidInput) unless ``name`` is loaded or in the repository; checked
        before a lock is made for it, so unknown names leave nothing behind."""
        if name not in self._models and name not in self.repository.names():
            raise self._not_found(name)

    async def load(self, name: str, override: LoadOverride | None = None) -> Model:
        """(Re)load ``name`` from the repository, or as ``override`` has it (RepositoryModelLoad's
        parameters); the new model replaces the old one at once.

        Any failure (a bad config or file, or an error nobody foresaw) fails this model alone:
        one log line, the reason kept for RepositoryIndex and NOT_FOUND answers.
        """
        try:
            self._known(name)
        except ModelNotFoundError:  # Triton's words for this case, which its clients look for
            held = ", ".join(map(quote, sorted(self.repository.names()))) or "none"
            raise ModelNotFoundError(
                f"failed to load {quote(name)}, failed to poll from model repository: it holds "
                f"no model of that name; models in the repository: {held}"
            ) from None
        async with self._load_locks.setdefault(name, asyncio.Lock()):
            loop = asyncio.get_running_loop()
            start = time.perf_counter()
            try:
                model = await loop.run_in_executor(self.executor, self._build, name, override)
            except Exception as exc:  # noqa: BLE001 -- whatever it is, only this model fails
                error = exc
                if not isinstance(exc, ServeError):
                    error = ModelLoadError(f"{name}: unexpected error while loading ({cause(exc)})")
                if not isinstance(error, ModelNotFoundError | InvalidInputError):
                    self._failures[name] = str(error)  # the model's fault, not the request's
                detail = f" [{error.detail}]" if error.detail else ""
                log.warning("failed to load model %s: %s%s", quote(name), error, detail, extra=ONCE)
                if isinstance(error, ModelNotFoundError):
                    raise error from None
                # "failed to load 'NAME'": the phrase Triton's clients look for
                raise type(error)(f"failed to load {quote(name)}: {error}") from None
            self._models[name] = model  # atomic swap: requests in flight keep the old one
            self._failures.pop(name, None)
            elapsed = 1000 * (time.perf_counter() - start)
            log.info("%s in %.0f ms", _describe(model), elapsed, extra=ONCE)
            return model

    def _build(self, name: str, override: LoadOverride | None = None) -> Model:
        if override is None:
            source = self.repository.source(name)
            return load_model(source, self.factory, self.executor, self.batching)
        base = None if override.files else self.repository.source(name)
        with tempfile.TemporaryDirectory(prefix=f"bnmodel-load-{name[:32]}-") as folder:
            source = override_source(name, override, base, Path(folder))
            try:  # sessions read the files now: the folder may go afterwards
                return load_model(source, self.factory, self.executor, self.batching)
            except ModelLoadError as exc:  # the client's config or files: say so
                raise InvalidInputError(
                    f"{exc} (with the RepositoryModelLoad parameters)"
                ) from None

    async def unload(self, name: str) -> None:
        """Stop serving ``name``: new requests get NOT_FOUND at once; returns once the requests
        already queued or running have finished. Waits for a load of ``name`` in flight, so
        that load cannot put the model back afterwards."""
        self._known(name)
        async with self._load_locks.setdefault(name, asyncio.Lock()):
            model = self._models.pop(name, None)
            self._failures.pop(name, None)
            if model is not None:
                pending = sum(v.scheduler.pending for v in model.versions.values())
                await model.drain()
                log.info("unloaded model %s (drained %d requests in flight)", quote(name), pending)

    @property
    def failures(self) -> dict[str, str]:
        """Models that failed to load, with why."""
        return dict(self._failures)

    def statistics(self, name: str = "", version: str = "") -> list[tuple[str, str, VersionStats]]:
        """(model, version, counters) of every loaded version, or of ``name`` [``version``]."""
        if name:
            model, found = self.model(name, version)
            chosen = [(model, found)] if version else [(model, v) for v in model.versions.values()]
        else:
            chosen = [(m, v) for _, m in sorted(self._models.items()) for v in m.versions.values()]
        return [(model.name, v.version, v.stats) for model, v in chosen]

    async def load_all(self, names: Iterable[str] | None = None) -> list[str]:
        """Load every model of the repository; failures are logged and left UNAVAILABLE."""
        loaded = []
        for name in self.repository.names() if names is None else names:
            try:
                await self.load(name)
                loaded.append(name)
            except ServeError:  # logged by load; every other model still loads
                pass
        return loaded

    # -- inference ------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate ``request`` completely, then run it; errors leave other requests untouched."""
        model, version = self.model(request.model_name, request.model_version)
        start = time.perf_counter_ns()
        try:  # Triton counts refused, failed, expired and cancelled requests as failures
            check_parameters(model, request)
            set_request_timeout(request.parameters)  # the batch queue drops expired requests
            request = self._from_shared_memory(model.name, request)
            inputs = check_inputs(model, request)
            if self.reject_non_finite:
                check_finite(model, inputs)
            outputs = check_outputs(model, request.outputs)
            targets = _shared_targets(request.output_parameters, f"model {quote(model.name)}")
            categories = version.stats.categories
            if self.count_categories and categories is not None:  # valid inputs, as decoded
                categories.add(inputs)
            results = await version.execute(inputs)
            shared = tuple(
                self._to_shared_memory(name, results[name], *targets[name], model.name)
                for name in outputs
                if name in targets
            )
        except BaseException:
            version.stats.record_failure(time.perf_counter_ns() - start)
            raise
        version.stats.record_success(time.perf_counter_ns() - start)
        return InferResponse(
            model_name=model.name,
            model_version=version.version,
            id=request.id[:MAX_ECHOED_ID],
            outputs=tuple((name, results[name]) for name in outputs if name not in targets),
            shared=shared,
        )

    # -- shared memory --------------------------------------------------------------------

    def _from_shared_memory(self, model: str, request: InferRequest) -> InferRequest:
        """Inputs that name a shared-memory region get its bytes as their raw contents."""
        if not any(p.name == _REGION for t in request.inputs for p in t.parameters):
            return request  # the usual case
        inputs, shared = [], 0
        for tensor in request.inputs:
            where = f"model {quote(model)} input {quote(tensor.name)}"
            target = _shared_target(tensor.parameters, where)
            if target is None:
                inputs.append(tensor)
                continue
            if tensor.raw is not None or tensor.contents is not None or tensor.values is not None:
                raise InvalidInputError(f"{where}: has both data and a shared_memory_region")
            region, size, offset = target
            raw = self.shared_memory.view(region, offset, size, where)
            inputs.append(dataclasses.replace(tensor, raw=raw))
            shared += 1
        # raw_input_contents counted only the inputs outside shared memory
        raw_count = request.raw_count + shared if request.raw_count else 0
        return dataclasses.replace(request, inputs=tuple(inputs), raw_count=raw_count)

    def _to_shared_memory(
        self, name: str, array: np.ndarray, region: str, size: int, offset: int, model: str
    ) -> SharedOutput:
        where = f"model {quote(model)} output {quote(name)}"
        datatype, raw = encode_raw(array)
        if len(raw) > size:
            raise InvalidInputError(
                f"{where}: shared memory size specified with the request ({size} bytes) should "
                f"be at least {len(raw)} bytes to hold the results"
            )
        self.shared_memory.view(region, offset, len(raw), where)[:] = raw
        return SharedOutput(name, datatype.name, array.shape, region, len(raw))


_REGION = "shared_memory_region"  # the parameter that puts a tensor in shared memory


def _shared_target(parameters: tuple[Parameter, ...], where: str) -> tuple[str, int, int] | None:
    """(region, byte_size, offset) from a tensor's shared_memory_* parameters, or None."""
    found = {p.name: p for p in parameters if p.name.startswith("shared_memory_")}
    if _REGION not in found:
        return None
    region = found["shared_memory_region"]
    if region.kind != "string_param":
        raise InvalidInputError(f"{where}: parameter 'shared_memory_region' must be a string")
    numbers = []
    for key, default in (("shared_memory_byte_size", None), ("shared_memory_offset", 0)):
        param = found.get(key)
        if param is None and default is None:
            raise InvalidInputError(f"{where}: 'shared_memory_region' given without {key!r}")
        value = default if param is None else param.value
        if param is not None and (param.kind not in ("int64_param", "uint64_param") or value < 0):
            raise InvalidInputError(f"{where}: parameter {key!r} must be an integer >= 0")
        numbers.append(value)
    return region.value, numbers[0], numbers[1]


def _shared_targets(output_parameters, where: str) -> dict[str, tuple[str, int, int]]:
    """{output name: (region, byte_size, offset)} for the outputs asked for in shared memory."""
    if not output_parameters:
        return {}
    by_output: dict[str, list[Parameter]] = {}
    for output, param in output_parameters:
        by_output.setdefault(output, []).append(param)
    targets = {}
    for output, params in by_output.items():
        target = _shared_target(tuple(params), f"{where} output {quote(output)}")
        if target is not None:
            targets[output] = target
    return targets


def _describe(model: Model) -> str:
    inputs = ", ".join(
        f"{s.name} {s.datatype.name} {model.signature.shape(s)}" for s in model.signature.inputs
    )
    first = next(iter(model.versions.values()))
    providers = ",".join(p.removesuffix("ExecutionProvider") for p in first.runner.providers)
    rows = first.scheduler.inline_rows
    where = (
        f"batches of up to {rows} rows run on the event loop"
        if rows
        else "every batch runs on the executor threads"
    )
    return (
        f"loaded model {quote(model.name)} version(s) {', '.join(model.versions)} "
        f"(inputs {inputs}; max_batch_size {model.signature.max_batch_size}; {providers}; "
        f"{where})"
    )
