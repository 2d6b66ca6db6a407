"""bnmodel/contract.py: round trips through ONNX metadata_props and config.pbtxt, output columns."""

from __future__ import annotations

import subprocess
import sys

import onnx
import onnxruntime as ort
import pytest
from bnmodel.serve.proto import model_config_pb2
from google.protobuf import text_format
from onnx import TensorProto, helper

from bnmodel.contract import ContractError, ModelContract, parameters_from_metadata

CLASSIFIER = ModelContract(
    "classification",
    feature_names=("age", "income"),
    categorical_columns=("color",),
    class_labels=("no", "yes"),
    target_names=("bought",),
    imputes=True,
)
REGRESSOR = ModelContract("regression", feature_names=("x0",), target_names=("a", "b"))


def _onnx_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """metadata_props written into a real ONNX file and read back by ONNX Runtime."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["features"], ["predictions"])],
        "g",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def _config_round_trip(parameters: dict[str, str]) -> dict[str, str]:
    """Parameters written as config.pbtxt text and parsed back."""
    config = model_config_pb2.ModelConfig(name="m")
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    parsed = text_format.Parse(text_format.MessageToString(config), model_config_pb2.ModelConfig())
    return {k: v.string_value for k, v in parsed.parameters.items()}


@pytest.mark.parametrize("contract", [CLASSIFIER, REGRESSOR], ids=["classifier", "regressor"])
def test_onnx_metadata_round_trips(contract):
    metadata = contract.to_metadata()
    if contract.imputes:  # the exporter adds the encoders; their presence means "imputes"
        metadata["bnmodel.preprocessing"] = "{}"
    assert ModelContract.from_metadata(_onnx_metadata(metadata)) == contract


@pytest.mark.parametrize("contract", [CLASSIFIER, REGRESSOR], ids=["classifier", "regressor"])
def test_config_parameters_round_trip(contract):
    assert ModelContract.from_parameters(_config_round_trip(contract.to_parameters())) == contract


def test_serve_copies_onnx_metadata_into_the_same_config_parameters():
    metadata = {**CLASSIFIER.to_metadata(), "bnmodel.preprocessing": "{}", "other": "x"}
    assert parameters_from_metadata(metadata) == CLASSIFIER.to_parameters()
    assert parameters_from_metadata({"producer": "someone"}) == {}


def test_output_columns_as_predict_and_infer_head_them():
    assert CLASSIFIER.output_columns() == ("bought", "p_no", "p_yes")
    assert REGRESSOR.output_columns() == ("a", "b")
    assert REGRESSOR.output_columns(3) == ("a,b_0", "a,b_1", "a,b_2")  # a width mismatch
    unnamed = ModelContract("regression")
    assert unnamed.output_columns(1) == ("predictions",)
    assert unnamed.output_columns(2) == ("predictions_0", "predictions_1")
    assert ModelContract("classification").output_columns(2) == ("class", "p_0", "p_1")
    assert CLASSIFIER.output_name == "probabilities" and REGRESSOR.output_name == "predictions"


def test_a_config_without_the_imputes_key_leaves_it_open():
    old = {k: v for k, v in CLASSIFIER.to_parameters().items() if k != "imputes"}
    assert ModelContract.from_parameters(old).imputes is None
    assert REGRESSOR.to_parameters()["imputes"] == "false"


def test_bad_metadata_names_the_key_at_fault():
    with pytest.raises(ContractError, match="model m.onnx has no bnmodel metadata"):
        ModelContract.from_metadata({"producer": "x"}, "model m.onnx")
    bad = {**CLASSIFIER.to_metadata(), "bnmodel.class_labels": "yes,no"}
    with pytest.raises(ContractError, match="class_labels is not a JSON list: 'yes,no'"):
        ModelContract.from_metadata(bad)
    with pytest.raises(ContractError, match="task must be"):
        ModelContract("ranking")
    with pytest.raises(ContractError, match=r"\['a'\] are both numeric and categorical"):
        ModelContract("regression", ("a",), ("a",))


def test_the_contract_imports_nothing_heavy():
    code = (
        "import sys; import bnmodel.contract; "
        "print(sorted(m for m in ('numpy', 'onnx', 'torch', 'pandas', 'google.protobuf') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_an_exported_models_metadata_is_the_contract_it_was_given(tmp_path):
    """onnx.save / onnx.load keep the props (the path export writes)."""
    model = onnx.ModelProto()
    helper.set_model_props(model, CLASSIFIER.to_metadata())
    onnx.save(model, tmp_path / "m.onnx")
    props = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert ModelContract.from_metadata(props).class_labels == ("no", "yes")
