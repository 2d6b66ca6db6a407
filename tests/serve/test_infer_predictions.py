"""serve/predict.py and the clients it drives: column names as `bnmodel predict` gives them, and
the one-input lookup behind `infer(model, array)`."""

from __future__ import annotations

import io

import numpy as np
import pytest
from bnmodel.serve.client import only_input_name
from bnmodel.serve.errors import InvalidInputError
from bnmodel.serve.predict import _predictions
from bnmodel.serve.proto import model_config_pb2


def _config(**parameters: str) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(name="m")
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def _header(predictions) -> str:
    stream = io.StringIO()
    predictions.to_csv(stream)
    return stream.getvalue().splitlines()[0]


def test_a_classifier_labels_its_class_column_with_the_training_target():
    outputs = {"probabilities": np.array([[0.2, 0.8], [0.9, 0.1]], np.float32)}
    named = _predictions(_config(class_labels='["a", "b"]', target_name="species"), outputs)
    assert _header(named) == "species,p_a,p_b"
    assert named.classes == ("b", "a")
    assert _header(_predictions(_config(class_labels='["a", "b"]'), outputs)) == "class,p_a,p_b"


def test_a_regressor_names_its_values_by_target_and_falls_back_to_the_output_name():
    one = {"predictions": np.array([[1.5], [2.5]], np.float32)}
    two = {"predictions": np.array([[1.0, 2.0]], np.float32)}
    assert _header(_predictions(_config(target_name="mpg"), one)) == "mpg"
    assert _header(_predictions(_config(target_name="a,b"), two)) == "a,b"
    assert _header(_predictions(_config(target_name="mpg"), two)) == "mpg_0,mpg_1"
    assert _header(_predictions(_config(), one)) == "predictions"


def test_a_one_input_models_input_is_looked_up_once_per_model_and_version():

    calls, cache = [], {}

    def lookup() -> list[str]:
        calls.append(1)
        return ["features"]

    for _ in range(3):
        assert only_input_name(cache, "m", "", lookup) == "features"
    assert only_input_name(cache, "m", "2", lookup) == "features"
    assert len(calls) == 2  # once for version "", once for "2"


def test_a_model_with_several_inputs_asks_for_a_dict():

    with pytest.raises(InvalidInputError, match="has inputs features, color: pass a dict"):
        only_input_name({}, "raw", "", lambda: ["features", "color"])
