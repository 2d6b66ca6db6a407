"""The equivalence report: passes for a correct fold, names output, row and values otherwise."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from bnmodel.export.fold import fold_model
from bnmodel.export.onnx_export import build_onnx
from bnmodel.export.verify import ExportMismatchError, verify_equivalence
from export_testlib import make_model
from onnx import numpy_helper


def _graphs(model, folded, task="classification", fp16=False) -> tuple[bytes, bytes]:
    return tuple(
        build_onnx(
            list(m.net.named_children()), task=task, in_features=6, fp16=fp16
        ).SerializeToString()
        for m in (folded, model)
    )


def test_correct_fold_is_equivalent_for_every_candidate() -> None:
    model = make_model(bn_placement="post")
    folded, _ = fold_model(model)
    rows = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    report = verify_equivalence(
        model,
        folded,
        *_graphs(model, folded),
        task="classification",
        in_features=6,
        validation_rows=rows,
    )
    assert report.ok, report.format()
    assert {c.candidate for c in report.comparisons} == {
        "PyTorch unfolded",
        "PyTorch folded",
        "ONNX Runtime folded, graph opt off",
        "ONNX Runtime folded, graph opt on",
        "ONNX Runtime unfolded, graph opt off",
        "ONNX Runtime unfolded, graph opt on",
    }
    assert {(c.rows, c.output) for c in report.comparisons} == {
        (r, o) for r in ("validation", "random") for o in ("logits", "probabilities")
    }
    assert all(c.argmax_agreement == 1.0 for c in report.comparisons if c.output == "logits")
    assert "equivalent within tolerance" in str(report)


def test_tampered_graph_fails_naming_output_row_and_values() -> None:
    model = make_model(bn_placement="pre")
    folded, _ = fold_model(model)
    good, unfolded = _graphs(model, folded, task="regression")
    proto = onnx.load_from_string(good)
    bias = next(t for t in proto.graph.initializer if t.name.endswith(".bias"))
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 0.05, bias.name))
    report = verify_equivalence(
        model,
        folded,
        proto.SerializeToString(),
        unfolded,
        task="regression",
        in_features=6,
        batch_sizes=(1, 7),
    )
    assert not report.ok
    assert {c.candidate for c in report.failures} == {
        "ONNX Runtime folded, graph opt off",
        "ONNX Runtime folded, graph opt on",
    }
    with pytest.raises(
        ExportMismatchError,
        match=r"output 'predictions' \(ONNX Runtime folded, graph opt o.*row \d+ of batch \d+: "
        r"reference -?[\d.e+-]+, got -?[\d.e+-]+",
    ) as info:
        report.raise_for_mismatch()
    assert info.value.report is report


def test_fp16_candidates_use_the_fp16_tolerance() -> None:
    model = make_model()
    folded, _ = fold_model(model)
    report = verify_equivalence(
        model,
        folded,
        *_graphs(model, folded, fp16=True),
        task="classification",
        in_features=6,
        fp16=True,
    )
    assert report.ok, report.format()
    ort_rows = [c for c in report.comparisons if c.candidate.startswith("ONNX Runtime")]
    assert {c.precision for c in ort_rows} == {"fp16"}
    assert {c.tolerance for c in ort_rows} == {1e-2}


def test_validation_rows_of_the_wrong_width_are_refused() -> None:
    model = make_model()
    folded, _ = fold_model(model)
    with pytest.raises(ValueError, match=r"expected shape \(N >= 1, 6\), got \(4, 5\)"):
        verify_equivalence(
            model,
            folded,
            *_graphs(model, folded),
            task="classification",
            in_features=6,
            validation_rows=np.zeros((4, 5)),
        )
