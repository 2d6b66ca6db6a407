"""serve/predict.py: `bnmodel infer`'s output columns are named as `bnmodel predict` names them."""

from __future__ import annotations

import io

import numpy as np
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
