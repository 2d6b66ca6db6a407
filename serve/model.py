"""A loaded model: its signature (from config.pbtxt), versions, runners and statistics.

:class:`ModelRunner` is the single place a model executes (blocking); :meth:`ModelVersion.execute`
the single call the data plane makes to run it, through the version's Scheduler. A :class:`Model`
is immutable once built, so swapping the registry entry is atomic for requests in flight.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from .batching import BatchingOptions, Scheduler, batch_policy, with_inline_runs
from .categories import category_counts
from .codec import BYTES, Datatype, datatype_from_config, datatype_from_ort
from .errors import InvalidInputError, ModelLoadError, ModelNotFoundError
from .proto import model_config_pb2
from .repository import ModelSource, cause
from .session import OnnxSignature, SessionFactory, session_signature
from .settings import MAX_MESSAGE_BYTES
from .statistics import VersionStats

__all__ = [
    "TensorSpec",
    "ModelSignature",
    "ModelRunner",
    "ModelVersion",
    "Model",
    "message_bytes",
    "signature_from_config",
    "check_session",
    "load_model",
]

log = logging.getLogger("bnmodel.serve")

_FRAMING_ALLOWANCE = 64 * 1024  # names, shapes, protobuf tags around the tensor bytes
# A BYTES element has no fixed size: message limits budget a string of up to 256 bytes and its
# 4-byte length (a categorical value; longer ones fit while the whole message does).
_BYTES_ELEMENT = 4 + 256


@dataclass(frozen=True)
class TensorSpec:
    """A model tensor as the protocol sees it; ``dims`` exclude the batch axis (-1: variable)."""

    name: str
    datatype: Datatype
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # 0: tensors have no batch axis

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def shape(self, spec: TensorSpec) -> list[int]:
        """Full protocol shape: -1 for the batch axis when the model batches."""
        return [-1, *spec.dims] if self.max_batch_size > 0 else list(spec.dims)

    # Computed once: request validation reads them on every request.
    @functools.cached_property
    def input_names(self) -> frozenset[str]:
        return frozenset(spec.name for spec in self.inputs)

    @functools.cached_property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)


def _specs(tensors, where: str) -> tuple[TensorSpec, ...]:
    specs = []
    for tensor in tensors:
        try:
            datatype = datatype_from_config(model_config_pb2.DataType.Name(tensor.data_type))
        except ValueError as exc:  # InvalidInputError, or an enum number DataType lacks
            raise ModelLoadError(f"{where} {tensor.name!r}: data_type: {exc}") from None
        specs.append(TensorSpec(tensor.name, datatype, tuple(tensor.dims)))
    return tuple(specs)


def signature_from_config(config: model_config_pb2.ModelConfig) -> ModelSignature:
    """The tensors a config.pbtxt declares; ModelLoadError when it declares none or bad types."""
    where = f"{config.name}/config.pbtxt"
    if not config.input or not config.output:
        raise ModelLoadError(f"{where}: declares no input or no output tensors")
    if config.max_batch_size < 0:
        raise ModelLoadError(f"{where}: max_batch_size is {config.max_batch_size}, expected >= 0")
    signature = ModelSignature(
        inputs=_specs(config.input, f"{where}: input"),
        outputs=_specs(config.output, f"{where}: output"),
        max_batch_size=config.max_batch_size,
    )
    need = message_bytes(signature)
    if need > MAX_MESSAGE_BYTES:
        raise ModelLoadError(
            f"{where}: a request or response of max_batch_size rows needs {need:,} bytes, "
            f"more than gRPC's largest message ({MAX_MESSAGE_BYTES:,}); lower max_batch_size "
            "or the dims"
        )
    return signature


def message_bytes(signature: ModelSignature) -> int:
    """Bytes a request or response of max_batch_size rows needs (-1 dims count as 1), with
    room for the protobuf framing around the tensors."""
    rows = max(signature.max_batch_size, 1)
    need = max(
        rows * sum(_element_bytes(s.datatype) * math.prod(max(d, 1) for d in s.dims) for s in group)
        for group in (signature.inputs, signature.outputs)
    )
    return int(need * 1.25) + _FRAMING_ALLOWANCE


def _element_bytes(datatype: Datatype) -> int:
    return _BYTES_ELEMENT if datatype is BYTES else datatype.dtype.itemsize


def _dims_match(declared: list[int], actual: tuple[int | None, ...]) -> bool:
    return len(declared) == len(actual) and all(
        d == -1 or a is None or d == a for d, a in zip(declared, actual, strict=True)
    )


def _protocol_name(ort_type: str) -> str:
    try:
        return datatype_from_ort(ort_type).name
    except InvalidInputError:
        return ort_type


def check_session(signature: ModelSignature, session, where: str) -> OnnxSignature:
    """Refuse a model file whose graph does not match its config.pbtxt; returns the graph's."""
    graph = session_signature(session)
    graph_inputs = {name: (t, s) for name, t, s in graph.inputs}
    graph_outputs = {name: (t, s) for name, t, s in graph.outputs}
    if set(graph_inputs) != signature.input_names:
        raise ModelLoadError(
            f"{where}: graph inputs {sorted(graph_inputs)} do not match config.pbtxt inputs "
            f"{sorted(signature.input_names)}"
        )
    for specs, tensors, kind in (
        (signature.inputs, graph_inputs, "input"),
        (signature.outputs, graph_outputs, "output"),
    ):
        for spec in specs:
            if spec.name not in tensors:
                raise ModelLoadError(f"{where}: config.pbtxt {kind} {spec.name!r} not in graph")
            ort_type, shape = tensors[spec.name]
            graph_type = _protocol_name(ort_type)
            if graph_type != spec.datatype.name or not _dims_match(signature.shape(spec), shape):
                raise ModelLoadError(
                    f"{where}: {kind} {spec.name!r} is {spec.datatype.name} "
                    f"{signature.shape(spec)} in config.pbtxt but {graph_type} "
                    f"{[-1 if d is None else d for d in shape]} in the graph"
                )
    return graph


class ModelRunner:
    """Runs one ONNX Runtime session; blocking, thread-safe (ORT sessions allow concurrent runs)."""

    def __init__(self, session, output_names: tuple[str, ...]) -> None:
        self._session = session
        self.output_names = output_names

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{input name: [batch, ...] array} -> {output name: [batch, ...]} for every output."""
        results = self._session.run(list(self.output_names), dict(inputs))
        return dict(zip(self.output_names, results, strict=True))

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()


@dataclass(frozen=True)
class ModelVersion:
    version: str
    runner: ModelRunner
    scheduler: Scheduler  # queue, batching and drain of this version's runs

    @property
    def stats(self) -> VersionStats:
        return self.scheduler.stats

    async def execute(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of ``inputs``, queued on the version's scheduler (maybe batched)."""
        rows = next(iter(inputs.values())).shape[0] if self.scheduler.batched else 1
        return await self.scheduler.submit(inputs, rows)


@dataclass(frozen=True)
class Model:
    """A loaded model: what requests are validated against, and its versions to run."""

    name: str
    config: model_config_pb2.ModelConfig
    signature: ModelSignature
    versions: dict[str, ModelVersion]  # ascending by number

    async def drain(self) -> None:
        """Refuse new requests; return when every queued and running one has finished."""
        await asyncio.gather(*(v.scheduler.drain() for v in self.versions.values()))

    @property
    def latest(self) -> str:
        return max(self.versions, key=int)

    def version(self, version: str) -> ModelVersion:
        """``version`` ("" = latest) or ModelNotFoundError listing the versions served."""
        found = self.versions.get(version or self.latest)
        if found is not None:
            return found
        shown = version[:32]
        if not (version.isascii() and version.isdigit()):
            raise InvalidInputError(  # Triton's words and code for a version that is no number
                f"failed to get model version from specified version string {shown!r} "
                f"(details: not a number), version should be an integer; model {self.name!r} "
                f"serves versions {', '.join(self.versions)}"
            )
        raise ModelNotFoundError(
            f"model {self.name!r} has no version {shown!r}; versions served: "
            f"{', '.join(self.versions)}"
        )


def _example_inputs(signature: ModelSignature):
    """rows -> zero inputs ("0" for BYTES: valid for a categorical input and for one holding
    numbers) of that many rows (to time the model), or None when a non-batch dimension is
    variable (the cost depends on what clients send)."""
    if any(-1 in spec.dims for spec in signature.inputs):
        return None
    batched = signature.max_batch_size > 0

    def example(rows: int) -> dict[str, np.ndarray]:
        return {
            spec.name: np.full(
                ((rows,) if batched else ()) + spec.dims,
                "0" if spec.datatype is BYTES else 0,
                spec.datatype.dtype,
            )
            for spec in signature.inputs
        }

    return example


def load_model(
    source: ModelSource,
    factory: SessionFactory,
    executor: Executor,
    batching: BatchingOptions | None = None,
) -> Model:
    """Create and check sessions for every version of ``source``; blocking (file reads, session
    creation): call it off the event loop."""
    signature = signature_from_config(source.config)
    options = batching or BatchingOptions()
    policy = batch_policy(source.config, options)
    example = _example_inputs(signature)
    parameters = {k: p.string_value for k, p in source.config.parameters.items()}
    string_inputs = frozenset(s.name for s in signature.inputs if s.datatype is BYTES)
    versions = {}
    for version, path in sorted(source.versions.items(), key=lambda item: int(item[0])):
        try:
            session = factory.create(path)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{source.name}/{version}: {exc}", detail=exc.detail) from None
        graph = check_session(signature, session, f"{source.name}/{version}/{path.name}")
        runner = ModelRunner(session, signature.output_names)
        try:  # times the model on example inputs, to choose the batches run on the loop
            timed = with_inline_runs(
                policy, runner.run, example, signature.max_batch_size, options.max_inline_us
            )
        except Exception as exc:  # noqa: BLE001 -- ORT raises several pybind types
            # Example inputs are only a guess at what the model accepts (a string input may
            # have to hold numbers, say): a model that fails on them still loads, its batches
            # all run on the executor threads, and real requests decide.
            log.warning(
                "model %r version %s: the timing run on example inputs failed (%s); every batch "
                "runs on the executor threads",
                source.name,
                version,
                cause(exc),
                extra={"once": True},
            )
            timed = policy
        counts = category_counts(source.name, version, graph.metadata, parameters, string_inputs)
        stats = VersionStats(categories=counts)
        scheduler = Scheduler(runner.run, executor, timed, stats, signature.batched)
        versions[version] = ModelVersion(version, runner, scheduler)
    return Model(source.name, source.config, signature, versions)
