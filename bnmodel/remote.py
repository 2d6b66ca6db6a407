"""Predictions through a running server: ``bnmodel infer`` and the Python API's RemoteModel.

Rows are read by ``bnmodel.table`` (the reader training and ``bnmodel predict`` use, with the
same cell rules), so a cell gives the same tensor here as locally; the model's config.pbtxt
parameters hold its data contract (``bnmodel.contract``), which picks the columns and heads
the answer as ``bnmodel predict`` does. Chunks of the model's max_batch_size rows go out as one
request each (one row per request for a model without a batch axis), over gRPC
(``InferenceClient``) or, for an http:// or https:// URL, HTTP (``HttpInferenceClient``).

A raw-row model takes "features" (its numeric columns, NaN for missing) and one BYTES [N, 1]
input per categorical column, named after it: such rows come from a table with named columns.
Imports neither torch nor pandas (pandas only for a DataFrame in or out).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import numpy as np

from bnmodel import table
from bnmodel.contract import ContractError, ModelContract
from bnmodel.predict import prediction_columns, predictions_frame
from bnmodel.serve.client import InferenceClient
from bnmodel.serve.errors import InvalidInputError
from bnmodel.serve.http_client import HttpInferenceClient, is_http_url
from bnmodel.serve.proto import model_config_pb2
from bnmodel.serve.security import TLSFiles
from bnmodel.unseen import UnseenText

__all__ = [
    "Predictions",
    "RemoteModel",
    "config_contract",
    "parse_model_url",
    "predict_file",
    "write_predictions",
]


@dataclass(frozen=True)
class Predictions:
    """``values``: probabilities [N, C] for a classifier, predictions [N, T] for a regressor."""

    task: str  # "classification" or "regression"
    columns: tuple[str, ...]  # one name per column of ``values``
    values: np.ndarray
    classes: tuple[str, ...] | None = None  # predicted label per row (classifier); "" for NaN
    label_column: str = "class"  # the classifier's label column: the training target's name
    # One line per categorical column with many cells in the "other" slot (bnmodel.unseen).
    warnings: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, contract: ModelContract, values: np.ndarray, warnings: tuple[str, ...] = ()
    ) -> Predictions:
        columns = prediction_columns(contract, values)
        names = tuple(columns)
        if not contract.is_classifier:
            return cls(contract.task, names, values, warnings=warnings)
        classes = tuple(columns[names[0]])
        return cls(contract.task, names[1:], values, classes, names[0], warnings)

    @property
    def non_finite_rows(self) -> list[int]:
        """Rows (0-based) whose outputs hold NaN or inf: no class is given for them."""
        return [int(i) for i in np.flatnonzero(~np.isfinite(self.values).all(axis=1))]

    def to_csv(self, stream: TextIO) -> None:
        writer = csv.writer(stream, lineterminator="\n")
        header = ([self.label_column] if self.classes is not None else []) + list(self.columns)
        writer.writerow(header)
        for i, row in enumerate(self.values):
            cells = [f"{v:.6g}" for v in row]
            writer.writerow(([self.classes[i]] if self.classes is not None else []) + cells)


def config_contract(config: model_config_pb2.ModelConfig) -> ModelContract:
    """The data contract in a served model's config (parameters, output names)."""
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    try:
        return ModelContract.from_parameters(
            parameters,
            output_names=[o.name for o in config.output],
            source=f"model {config.name!r}",
        )
    except ContractError as exc:
        raise InvalidInputError(str(exc)) from None


def parse_model_url(url: str) -> tuple[str, str]:
    """(server URL, model name) of grpc://HOST:PORT/MODEL, http(s)://HOST:PORT/MODEL or
    HOST:PORT/MODEL (gRPC)."""
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    model = parts.path.strip("/")
    if not parts.netloc or not model or "/" in model:
        raise ValueError(
            f"model URL {url!r}: expected grpc://HOST:PORT/MODEL or http://HOST:PORT/MODEL"
        )
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}", model
    if parts.scheme != "grpc":
        raise ValueError(f"model URL {url!r}: scheme must be grpc, http or https")
    return parts.netloc, model


class RemoteModel:
    """A model on a running server (``bnmodel serve`` or Triton), with the local predictor's
    methods: ``contract``, ``outputs``, ``predict`` and ``predict_proba``."""

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        timeout: float = 30.0,
        tls: TLSFiles | None = None,
        auth_token: str | None = None,
    ) -> None:
        """``url``: grpc://HOST:PORT/MODEL or http://HOST:PORT/MODEL; or a server URL
        (HOST:PORT, http://HOST:PORT) and ``model``."""
        self.url, self.model = (url, model) if model else parse_model_url(url)
        # http:// or https://: the same calls over HTTP (serve/http_client.py); else gRPC.
        connect = HttpInferenceClient if is_http_url(self.url) else InferenceClient
        self._client = connect(self.url, timeout=timeout, tls=tls, auth_token=auth_token)
        self.config = self._client.model_config(self.model)
        self.contract = config_contract(self.config)

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def outputs(
        self, x: Any, *, role: str = "input", unseen: UnseenText | None = None
    ) -> np.ndarray:
        """Probabilities [N, C] (classifier) or predictions [N, T] (regressor), float32, of
        the rows of ``x``: a path, a DataFrame, a pyarrow Table or an ndarray. ``unseen``
        counts the categorical cells that fall into the "other" slot."""
        parts = []
        for inputs in self.request_inputs(x, role=role):
            if unseen is not None:
                unseen.add(inputs)
            parts.append(self._infer(inputs))
        if not parts:
            raise InvalidInputError(f"{role} {_name(x)}: no rows")
        return np.concatenate(parts).astype(np.float32, copy=False)

    def predict(self, x: Any) -> Any:
        """A pandas DataFrame headed as ``bnmodel predict`` heads its output."""
        return predictions_frame(self.contract, self.outputs(x), "predict", x)

    def predict_proba(self, x: Any) -> Any:
        return predictions_frame(self.contract, self.outputs(x), "predict_proba", x)

    # ----------------------------------------------------------------------------------------

    def _infer(self, inputs: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        name = self.contract.output_name
        names = {o.name for o in self.config.output}
        wanted = (name,) if name in names else ()
        out = self._client.infer(self.model, inputs, outputs=wanted)
        value = out[name] if name in out else next(iter(out.values()))
        return np.asarray(value).reshape(len(value) if self.config.max_batch_size else 1, -1)

    def request_inputs(
        self, x: Any, *, role: str = "input"
    ) -> Iterator[dict[str, np.ndarray] | np.ndarray]:
        """The tensors ``outputs`` sends, one request at a time: max_batch_size rows (a dict
        of inputs, or the array alone for a one-input model), or one row shaped as the
        model's dims for a model without a batch axis."""
        numeric, strings = _inputs(self.config)
        dates = [t for t in numeric if t.name in self.contract.date_columns]
        numeric = [t for t in numeric if t.name not in self.contract.date_columns]
        named = [*strings, *dates]  # inputs read from a column of the same name
        names = self._numeric_names(numeric, named, x, role)
        dtype = (
            np.float16
            if numeric and numeric[0].data_type == model_config_pb2.TYPE_FP16
            else np.float32
        )
        # A model that does not record whether it imputes gets NaN; the server decides.
        allow_missing = self.contract.imputes is not False
        batch = self.config.max_batch_size
        try:
            chunks = table.iter_chunks(
                x,
                names,
                [t.name for t in strings],
                chunk_rows=max(batch, 1) * 64,
                allow_missing=allow_missing,
                role=role,
                dates=[t.name for t in dates],
            )
            for chunk in chunks:
                inputs = {} if not numeric else {numeric[0].name: chunk.features.astype(dtype)}
                inputs.update(
                    {t.name: chunk.categories[:, i : i + 1] for i, t in enumerate(strings)}
                )
                inputs.update({t.name: chunk.dates[:, i : i + 1] for i, t in enumerate(dates)})
                if not named:  # a one-input model: the array alone
                    inputs = inputs[numeric[0].name]
                if batch:
                    yield from _slices(inputs, batch)
                else:
                    dims = list(numeric[0].dims)
                    for row in inputs:
                        yield row.reshape(dims)
        except table.TableError as exc:
            raise InvalidInputError(str(exc)) from None

    def _numeric_names(
        self, numeric: list[Any], strings: list[Any], x: Any, role: str
    ) -> list[str]:
        """The columns that fill the numeric input: the contract's feature names, checked
        against the input's width; positional names for a model that records none."""
        if not numeric:
            return []
        width = int(numeric[0].dims[-1]) if numeric[0].dims and numeric[0].dims[-1] > 0 else 0
        names = list(self.contract.feature_names)
        if strings and (self.config.max_batch_size < 1 or len(numeric) > 1):
            raise InvalidInputError(
                f"model {self.model!r}: string inputs are read from a table for a model with a "
                "batch axis and at most one numeric input (features); send this model's "
                "tensors yourself"
            )
        if names and width and len(names) != width:
            raise InvalidInputError(
                f"model {self.model!r}: its config's feature_names parameter names "
                f"{len(names)} column(s) for input {numeric[0].name!r} of "
                f"{list(numeric[0].dims)}; cannot tell which columns go into it"
            )
        if names:
            return names
        if not width:
            raise InvalidInputError(
                f"model {self.model!r}: its config names no feature columns and input "
                f"{numeric[0].name!r} has no fixed width; send this model's tensors yourself"
            )
        return _header_names(x, width, role) or [str(i) for i in range(width)]


def _inputs(config: model_config_pb2.ModelConfig) -> tuple[list[Any], list[Any]]:
    strings = [t for t in config.input if t.data_type == model_config_pb2.TYPE_STRING]
    numeric = [t for t in config.input if t.data_type != model_config_pb2.TYPE_STRING]
    return numeric, strings


def _header_names(x: Any, width: int, role: str) -> list[str] | None:
    """A CSV's header when it has ``width`` columns (a model that names no features)."""
    if not isinstance(x, (str, Path)):
        return None
    try:
        fmt = table.file_format(x, role)
        layout = table.csv_layout(x, fmt, role) if fmt.kind == "csv" else None
    except table.TableError:
        return None
    if layout is None or layout.header is None or len(layout.header) != width:
        return None
    return list(layout.header)


def _slices(inputs: dict[str, np.ndarray] | np.ndarray, size: int) -> Iterator[Any]:
    rows = len(inputs if isinstance(inputs, np.ndarray) else next(iter(inputs.values())))
    for lo in range(0, rows, size):
        if isinstance(inputs, np.ndarray):
            yield inputs[lo : lo + size]
        else:
            yield {k: v[lo : lo + size] for k, v in inputs.items()}


def _name(x: Any) -> str:
    return str(x) if isinstance(x, (str, Path)) else type(x).__name__


def predict_file(
    url: str,
    model: str,
    input_path: Path,
    *,
    timeout: float = 30.0,
    tls: TLSFiles | None = None,
    auth_token: str | None = None,
) -> Predictions:
    """Send the rows of ``input_path`` to ``model`` at ``url`` and collect the predictions."""
    if not Path(input_path).is_file():  # before connecting: the cheaper mistake first
        raise InvalidInputError(f"input {input_path} does not exist")
    with RemoteModel(url, model, timeout=timeout, tls=tls, auth_token=auth_token) as remote:
        unseen = UnseenText(remote.contract)
        values = remote.outputs(Path(input_path), unseen=unseen)
        return Predictions.of(remote.contract, values, tuple(unseen.warnings()))


def write_predictions(predictions: Predictions, output: Path | None) -> str:
    """CSV text of ``predictions``, also written to ``output`` when given."""
    buffer = io.StringIO()
    predictions.to_csv(buffer)
    if output is not None:
        Path(output).write_text(buffer.getvalue())
    return buffer.getvalue()
