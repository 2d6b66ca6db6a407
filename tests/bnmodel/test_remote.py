"""bnmodel/remote.py without a server: column names as `bnmodel predict` gives them, model URLs.
(Through a real server: tests/test_contract_paths.py, tests/serve/test_bytes.py, test_cli.py.)"""

from __future__ import annotations

import io

import numpy as np
import pytest
from bnmodel.serve.errors import InvalidInputError
from bnmodel.serve.proto import model_config_pb2

from bnmodel.remote import Predictions, config_contract, parse_model_url


def _config(outputs: tuple[str, ...] = ("probabilities",), **parameters: str):
    config = model_config_pb2.ModelConfig(name="m")
    for name in outputs:
        config.output.add(name=name)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def _header(config, values: np.ndarray) -> str:
    stream = io.StringIO()
    Predictions.of(config_contract(config), values).to_csv(stream)
    return stream.getvalue().splitlines()[0]


def test_a_classifier_labels_its_class_column_with_the_training_target():
    probabilities = np.array([[0.2, 0.8], [0.9, 0.1], [np.nan, 0.5]], np.float32)
    config = _config(task="classification", class_labels='["a", "b"]', target_name="species")
    named = Predictions.of(config_contract(config), probabilities)
    assert _header(config, probabilities) == "species,p_a,p_b"
    assert named.classes == ("b", "a", "")  # no class for a row of NaN
    assert named.non_finite_rows == [2]
    plain = _config(class_labels='["a", "b"]')  # no task: a "probabilities" output says it
    assert _header(plain, probabilities) == "class,p_a,p_b"


def test_a_regressor_names_its_values_by_target_and_falls_back_to_the_output_name():
    one, two = np.array([[1.5], [2.5]], np.float32), np.array([[1.0, 2.0]], np.float32)
    outputs = ("predictions",)
    assert _header(_config(outputs, task="regression", target_name="mpg"), one) == "mpg"
    assert _header(_config(outputs, task="regression", target_name="a,b"), two) == "a,b"
    assert _header(_config(outputs, task="regression", target_name="mpg"), two) == "mpg_0,mpg_1"
    assert _header(_config(outputs), one) == "predictions"


def test_a_config_whose_contract_is_not_json_is_refused_by_name():
    with pytest.raises(InvalidInputError, match=r"model 'm': .*feature_names is not a JSON list"):
        config_contract(_config(task="classification", feature_names="f0,f1"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("grpc://127.0.0.1:8001/iris", ("127.0.0.1:8001", "iris")),
        ("127.0.0.1:8001/iris", ("127.0.0.1:8001", "iris")),
        ("http://h:8000/iris", ("http://h:8000", "iris")),
        ("https://h/iris/", ("https://h", "iris")),
    ],
)
def test_model_urls_name_the_server_and_the_model(url, expected):
    assert parse_model_url(url) == expected


@pytest.mark.parametrize("url", ["grpc://h:1", "ftp://h/m", "http://h:1/a/b"])
def test_a_model_url_without_one_model_is_refused(url):
    with pytest.raises(ValueError, match="model URL"):
        parse_model_url(url)
