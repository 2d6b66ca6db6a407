"""Repository scanning, config.pbtxt parsing, version policies and the one-file repository."""

from __future__ import annotations

import pytest
from bnmodel.serve.errors import InvalidInputError, ModelLoadError, ModelNotFoundError
from bnmodel.serve.proto import model_config_pb2
from bnmodel.serve.repository import (
    ModelRepository,
    SingleModelRepository,
    check_model_name,
    json_parameter,
    select_versions,
)
from models import LABELS, config_text, mlp_model, write_model


def test_scan_parse_and_latest_version(tmp_path):
    write_model(tmp_path, "clf", mlp_model(), config_text("clf"), version=1)
    write_model(tmp_path, "clf", mlp_model(seed=3), config_text("clf"), version=3)
    (tmp_path / "not_a_model").mkdir()
    repo = ModelRepository(tmp_path)
    assert repo.names() == ["clf"]
    source = repo.source("clf")
    assert list(source.versions) == ["3"]  # latest { num_versions: 1 }
    assert source.config.max_batch_size == 64
    assert source.config.dynamic_batching.max_queue_delay_microseconds == 100
    assert json_parameter(source.config, "class_labels") == LABELS


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("", [3]),
        ("latest { num_versions: 2 }", [2, 3]),
        ("all {}", [1, 2, 3]),
        ("specific { versions: [1, 3, 9] }", [1, 3]),
    ],
)
def test_version_policy(policy, expected):
    parsed = model_config_pb2.ModelVersionPolicy()
    if policy:
        from google.protobuf import text_format

        text_format.Parse(policy, parsed)
    assert select_versions([3, 1, 2], parsed) == expected


def test_bad_config_names_file_and_line(tmp_path):
    write_model(tmp_path, "clf", mlp_model(), config_text("clf") + "max_batch_size: oops\n")
    with pytest.raises(
        ModelLoadError, match=r"clf/config.pbtxt: invalid model configuration: \d+:"
    ):
        ModelRepository(tmp_path).source("clf")


def test_fields_left_out_of_the_trimmed_proto_are_refused(tmp_path):
    write_model(tmp_path, "clf", mlp_model(), config_text("clf") + "sequence_batching {}\n")
    with pytest.raises(ModelLoadError, match="sequence_batching"):
        ModelRepository(tmp_path).source("clf")


def test_name_mismatch_and_missing_versions(tmp_path):
    write_model(tmp_path, "clf", mlp_model(), config_text("other"))
    with pytest.raises(ModelLoadError, match="does not match its folder"):
        ModelRepository(tmp_path).source("clf")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.pbtxt").write_text(config_text("empty"))
    with pytest.raises(ModelLoadError, match="no version folder"):
        ModelRepository(tmp_path).source("empty")


@pytest.mark.parametrize("name", ["", "..", "a/b", "x" * 300])
def test_names_that_could_leave_the_repository_are_refused(name):
    with pytest.raises(InvalidInputError):
        check_model_name(name)


def test_symlink_out_of_the_repository_is_not_a_model(tmp_path):
    outside = tmp_path / "outside"
    write_model(outside, "evil", mlp_model(), config_text("evil"))
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    (repo_dir / "evil").symlink_to(outside / "evil")
    with pytest.raises(ModelNotFoundError):
        ModelRepository(repo_dir).source("evil")


def test_single_file_repository_derives_config_from_the_graph(tmp_path):
    path = write_model(tmp_path, "digits", mlp_model(), config_text("digits"))
    repo = SingleModelRepository(path, max_batch_size=32)
    assert repo.names() == ["digits"]  # NAME/1/model.onnx -> NAME
    config = repo.source("digits").config
    assert config.max_batch_size == 32
    assert [(t.name, list(t.dims)) for t in config.input] == [("features", [8])]
    assert [t.name for t in config.output] == ["logits", "probabilities"]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert json_parameter(config, "class_labels") == LABELS
    with pytest.raises(ModelNotFoundError):
        repo.source("other")


def test_each_skipped_folder_is_logged_once_with_why(tmp_path, caplog):
    write_model(tmp_path, "clf", mlp_model(), config_text("clf"), version=1)
    (tmp_path / "clf" / "2").mkdir()  # an export that did not finish: no model.onnx
    (tmp_path / "clf" / "old").mkdir()
    (tmp_path / "orphan" / "1").mkdir(parents=True)  # a model folder without config.pbtxt
    (tmp_path / "orphan" / "1" / "model.onnx").write_bytes(b"")
    repo = ModelRepository(tmp_path)
    with caplog.at_level("WARNING", logger="bnmodel.serve"):
        for _ in range(2):
            assert repo.names() == ["clf"]
            assert list(repo.source("clf").versions) == ["1"]
    root = tmp_path.name
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"skipped {root}/clf/2/: version folder without model.onnx",
        f"skipped {root}/clf/old/: not a version folder (a version is a whole number)",
        f"skipped {root}/orphan/: no config.pbtxt in it",
    ]
