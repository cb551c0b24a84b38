"""Low-precision gradient graphs are gated on gradient fidelity, which embedding accuracy does not show."""

from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from edgecloak.calibration.precision import GATE, backward_nodes, format_table, precision_report


def test_backward_nodes_are_everything_downstream_of_the_cotangents():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    v = helper.make_tensor_value_info("cotangents", TensorProto.FLOAT, [1, 4])
    g = helper.make_tensor_value_info("grad", TensorProto.FLOAT, [1, 4])
    e = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 4])
    nodes = [
        helper.make_node("Relu", ["x"], ["embedding"], name="forward"),
        helper.make_node("Sign", ["x"], ["mask"], name="mask"),  # forward-only, used by the backward
        helper.make_node("Mul", ["cotangents", "mask"], ["t"], name="vjp1"),
        helper.make_node("Abs", ["t"], ["grad"], name="vjp2"),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, v], [e, g]))
    assert backward_nodes(model) == ["vjp1", "vjp2"]


@pytest.mark.slow
def test_int8_keeps_the_embedding_but_not_the_gradient_and_fails_the_gate():
    report = precision_report(["mobileface"], num_targets=4, precisions=("fp16", "int8"))
    rows = {r["precision"]: r for r in report["variants"]}
    assert rows["fp16"]["passed"] and rows["fp16"]["sign_agreement"] > 0.95
    int8 = rows["int8"]
    assert not int8["passed"]
    assert int8["embedding_cosine"] > 0.95 and int8["grad_cosine"] < GATE["grad_cosine"]  # the trap
    assert "FAIL" in format_table(report) and "pass" in format_table(report)


@pytest.mark.slow
def test_a_converted_bundle_records_its_figures_and_a_failed_gate_is_refused_or_warned(tmp_path):
    import json
    import warnings

    from edgecloak.calibration.precision import convert_bundle
    from edgecloak.errors import ModelError
    from edgecloak.export.bundle import default_bundle
    from edgecloak.runtime.bundle import Bundle
    from edgecloak.runtime.protector import RuntimeProtector

    fp32 = default_bundle(["mobileface"], 10)
    figures = convert_bundle(fp32, tmp_path / "fp16", "fp16", e2e_probes=1)
    assert figures["mobileface"]["passed"] and figures["mobileface"]["name"] == "fp16"
    e2e = figures["mobileface"]["protection"]  # scored by the fp32 recognizer on 5 probes
    assert e2e["passed"] and e2e["white_box_rank1_t"]["fp16"] >= e2e["white_box_rank1_t"]["fp32"] - e2e["allowed_drop"]
    assert e2e["allowed_drop"] == pytest.approx(1 / 5)  # one probe of five
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a passing variant loads silently, hashes verified
        bundle = Bundle.load(tmp_path / "fp16")
    assert bundle.precisions == {"mobileface": "fp16"}
    manifest = json.loads((tmp_path / "fp16" / "manifest.json").read_text())
    assert manifest["surrogates"][0]["precision"]["sign_agreement"] > GATE["sign_agreement"]
    assert "mobileface fp16" in RuntimeProtector.from_bundle(bundle, "onnxruntime").backend_description

    with pytest.raises(ModelError, match="fail the gate"):
        convert_bundle(fp32, tmp_path / "int8", "int8")
    assert not (tmp_path / "int8").exists() and not list(tmp_path.glob(".*"))
    convert_bundle(fp32, tmp_path / "int8", "int8", allow_failed_gate=True, e2e_probes=0)
    with pytest.warns(UserWarning, match="failed its fidelity gate"):
        Bundle.load(tmp_path / "int8")
