"""A model's data contract: which columns it takes, how it answers, and how that is written down.

One exported model carries its contract twice: as ONNX ``metadata_props`` (``bnmodel.task``,
``bnmodel.feature_names``, ...) and as ``config.pbtxt`` parameters (``task``, ``feature_names``,
...). Both spellings live here, and so do the names of the columns a prediction is written
under, so local predict, evaluate, ``bnmodel infer`` and the server agree on them.

    inputs   "features"  FP32 [N, F]: the numeric columns ``feature_names`` in order (NaN =
                         missing; only a model that ``imputes`` accepts it)
             COLUMN      BYTES [N, 1]: one per categorical column, named after it
             COLUMN      FP64 [N, 1]: one per date column, named after it: seconds since
                         1970-01-01 UTC (NaN = missing); the graph computes its features
    outputs  "probabilities" [N, C] (classifier, C = len(class_labels)) or "predictions" [N, T]
    columns  classifier: the label column (the target's name, else "class"), then p_LABEL
             regressor:  the target names (else "predictions", or predictions_i for several)

Imports only the standard library: the server and a serving-only install use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "CLASSIFICATION",
    "CONTRACT_KEYS",
    "FEATURES_INPUT",
    "METADATA_PREFIX",
    "PROBABILITIES_OUTPUT",
    "PREDICTIONS_OUTPUT",
    "REGRESSION",
    "ContractError",
    "ModelContract",
    "parameters_from_metadata",
]

CLASSIFICATION, REGRESSION = "classification", "regression"
FEATURES_INPUT = "features"
PROBABILITIES_OUTPUT, PREDICTIONS_OUTPUT = "probabilities", "predictions"
METADATA_PREFIX = "bnmodel."  # ONNX metadata key = prefix + config parameter key
LABEL_FALLBACK = "class"  # a classifier's label column when the target has no name
# The contract's keys, spelled as config.pbtxt parameters (ONNX metadata adds the prefix).
# "preprocessing" (imputation values, vocabularies) is ONNX-only: the graph applies it, and a
# config says only that the model imputes.
CONTRACT_KEYS = (
    "task",
    "class_labels",
    "feature_names",
    "categorical_columns",
    "date_columns",
    "target_name",
)
_IMPUTES = "imputes"
_PREPROCESSING = "preprocessing"
_VOCABULARIES = "vocabularies"


class ContractError(ValueError):
    """Metadata that does not describe a bnmodel model; the message names the key at fault."""


@dataclass(frozen=True)
class ModelContract:
    task: str  # CLASSIFICATION or REGRESSION
    feature_names: tuple[str, ...] = ()  # the "features" input's columns, in order
    categorical_columns: tuple[str, ...] = ()  # one BYTES [N, 1] input each, in order
    class_labels: tuple[str, ...] | None = None  # classifier output i is class_labels[i]
    target_names: tuple[str, ...] = ()  # the training target column(s); () when unknown
    # NaN numeric cells are allowed (the graph fills them); None: not recorded (a config
    # written before the key existed), so a client sends NaN and lets the server decide.
    imputes: bool | None = False
    # Per categorical column, the values with a slot of their own (anything else falls into
    # the "other" slot); None when not recorded. Used to report unseen text, not to encode.
    vocabularies: tuple[tuple[str, ...], ...] | None = None
    date_columns: tuple[str, ...] = ()  # one FP64 [N, 1] input of seconds each, in order

    def __post_init__(self) -> None:
        if self.task not in (CLASSIFICATION, REGRESSION):
            raise ContractError(
                f"task must be {CLASSIFICATION!r} or {REGRESSION!r}, got {self.task!r}"
            )
        if self.vocabularies is not None and len(self.vocabularies) != len(
            self.categorical_columns
        ):
            raise ContractError(
                f"{len(self.vocabularies)} vocabularies for {len(self.categorical_columns)} "
                "categorical columns"
            )
        kinds = {
            "numeric": self.feature_names,
            "categorical": self.categorical_columns,
            "date": self.date_columns,
        }
        for i, (kind, names) in enumerate(kinds.items()):
            for other, others in list(kinds.items())[i + 1 :]:
                clash = set(names) & set(others)
                if clash:
                    raise ContractError(f"column(s) {sorted(clash)} are both {kind} and {other}")

    # ----------------------------------------------------------------------------------------
    # Names

    @property
    def is_classifier(self) -> bool:
        return self.task == CLASSIFICATION

    @property
    def output_name(self) -> str:
        """The graph output a prediction is read from."""
        return PROBABILITIES_OUTPUT if self.is_classifier else PREDICTIONS_OUTPUT

    @property
    def columns(self) -> tuple[str, ...]:
        """Every input column a table must hold: numeric, categorical, then dates."""
        return (*self.feature_names, *self.categorical_columns, *self.date_columns)

    @property
    def target_name(self) -> str | None:
        """Targets as one string, "a,b" for several (the form flags and metadata use)."""
        return ",".join(self.target_names) or None

    @property
    def label_column(self) -> str:
        return self.target_names[0] if len(self.target_names) == 1 else LABEL_FALLBACK

    def labels(self, width: int) -> tuple[str, ...]:
        """Class labels, or index strings for a classifier whose labels are unknown."""
        if self.class_labels is not None and len(self.class_labels) == width:
            return self.class_labels
        return tuple(str(i) for i in range(width))

    def probability_columns(self, width: int | None = None) -> tuple[str, ...]:
        labels = self.class_labels if width is None else self.labels(width)
        return tuple(f"p_{label}" for label in labels or ())

    def value_columns(self, width: int | None = None) -> tuple[str, ...]:
        """A regressor's columns: its target names, else "predictions" (predictions_i)."""
        width = (len(self.target_names) or 1) if width is None else width
        if self.target_names and len(self.target_names) == width:
            return self.target_names
        base = self.target_name or PREDICTIONS_OUTPUT
        return (base,) if width == 1 else tuple(f"{base}_{i}" for i in range(width))

    def output_columns(self, width: int | None = None) -> tuple[str, ...]:
        """The header of a prediction table; ``width``: the output's columns (C or T)."""
        if self.is_classifier:
            return (self.label_column, *self.probability_columns(width))
        return self.value_columns(width)

    # ----------------------------------------------------------------------------------------
    # ONNX metadata_props

    def to_metadata(self) -> dict[str, str]:
        """``bnmodel.*`` metadata_props (the preprocessing JSON, which holds the vocabularies
        and says the model imputes, is the exporter's to add)."""
        skip = (_IMPUTES, _VOCABULARIES)
        return {METADATA_PREFIX + k: v for k, v in self.to_parameters().items() if k not in skip}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], source: str = "model") -> ModelContract:
        """The contract an exported ONNX model's metadata_props hold; ``source`` names the
        model in errors."""
        if METADATA_PREFIX + "task" not in metadata:
            raise ContractError(
                f"{source} has no bnmodel metadata (feature names, task); export it with "
                "bnmodel export"
            )
        params = _strip_prefix(metadata)
        params[_IMPUTES] = "true" if METADATA_PREFIX + _PREPROCESSING in metadata else "false"
        params.update(_vocabulary_parameter(metadata))
        return cls.from_parameters(params, source=source)

    # ----------------------------------------------------------------------------------------
    # config.pbtxt parameters

    def to_parameters(self) -> dict[str, str]:
        """config.pbtxt parameters: string values (JSON lists), optional keys left out."""
        params = {
            "task": self.task,
            "class_labels": json.dumps(list(self.class_labels or [])),
            "feature_names": json.dumps(list(self.feature_names)),
        }
        if self.categorical_columns:
            params["categorical_columns"] = json.dumps(list(self.categorical_columns))
        if self.date_columns:
            params["date_columns"] = json.dumps(list(self.date_columns))
        if self.target_names:  # clients head their output columns with it
            params["target_name"] = ",".join(self.target_names)
        if self.imputes is not None:
            params[_IMPUTES] = "true" if self.imputes else "false"
        if self.vocabularies is not None:
            vocabularies = zip(self.categorical_columns, self.vocabularies, strict=True)
            params[_VOCABULARIES] = json.dumps({c: list(v) for c, v in vocabularies})
        return params

    @classmethod
    def from_parameters(
        cls,
        parameters: Mapping[str, str],
        *,
        output_names: Iterable[str] = (),
        source: str = "model",
    ) -> ModelContract:
        """The contract in config.pbtxt parameters. A config without ``task`` (a model not
        exported by bnmodel) is a classifier when it has a "probabilities" output."""
        task = parameters.get("task") or (
            CLASSIFICATION if PROBABILITIES_OUTPUT in set(output_names) else REGRESSION
        )
        labels = _json_list(parameters, "class_labels", source)
        target = parameters.get("target_name", "")
        try:
            return cls(
                task=task,
                feature_names=tuple(_json_list(parameters, "feature_names", source)),
                categorical_columns=tuple(_json_list(parameters, "categorical_columns", source)),
                class_labels=tuple(labels) if labels and task == CLASSIFICATION else None,
                target_names=tuple(t.strip() for t in target.split(",")) if target else (),
                imputes=_flag(parameters.get(_IMPUTES)),
                vocabularies=_vocabularies(parameters, source),
                date_columns=tuple(_json_list(parameters, "date_columns", source)),
            )
        except ContractError as exc:
            raise ContractError(f"{source}: {exc}") from None


def parameters_from_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The config.pbtxt parameters an ONNX file's metadata_props give (``serve --model``):
    the contract's keys present there, copied as written; nothing for a foreign model."""
    params = {k: v for k, v in _strip_prefix(metadata).items() if k in CONTRACT_KEYS and v}
    # A model whose metadata holds no preprocessing may still impute (a graph made by hand):
    # say nothing then, and let the server decide what a NaN gives.
    if params and METADATA_PREFIX + _PREPROCESSING in metadata:
        params[_IMPUTES] = "true"
        params.update(_vocabulary_parameter(metadata))
    return params


def _vocabulary_parameter(metadata: Mapping[str, str]) -> dict[str, str]:
    """{"vocabularies": JSON} from the preprocessing metadata, or {} when it holds none."""
    try:
        prep = json.loads(metadata.get(METADATA_PREFIX + _PREPROCESSING) or "{}")
        vocabularies = prep["vocabularies"]
    except (ValueError, KeyError, TypeError):
        return {}
    return {_VOCABULARIES: json.dumps(vocabularies)} if isinstance(vocabularies, dict) else {}


def _vocabularies(parameters: Mapping[str, str], source: str) -> tuple[tuple[str, ...], ...] | None:
    text = parameters.get(_VOCABULARIES)
    if not text:
        return None
    try:
        value = json.loads(text)
        columns = _json_list(parameters, "categorical_columns", source)
        return tuple(tuple(str(v) for v in value[c]) for c in columns)
    except (ValueError, KeyError, TypeError):
        raise ContractError(
            f"{source}: {_VOCABULARIES} is not a JSON object of a list per categorical column"
        ) from None


def _flag(text: str | None) -> bool | None:
    return None if text is None else text.strip().lower() == "true"


def _strip_prefix(metadata: Mapping[str, str]) -> dict[str, str]:
    n = len(METADATA_PREFIX)
    return {k[n:]: v for k, v in metadata.items() if k.startswith(METADATA_PREFIX)}


def _json_list(parameters: Mapping[str, str], key: str, source: str) -> list[str]:
    """A JSON list of strings; absent or "" is []."""
    text = parameters.get(key) or "[]"
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list):
        raise ContractError(f"{source}: {key} is not a JSON list: {text[:80]!r}")
    return [str(v) for v in value]
