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
    # measured (scripts/measure_drift.py, 6 variants: threads 1/2, torch kernels): fp16 sign agreement
    # 0.985, int8 embedding cosine 0.986, int8 gradient cosine 0.71 (the gate is 0.95) in every one
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
    # The end-to-end gate, scored by the fp32 recognizer on 10 probes. Which probes a loop protects is a
    # trajectory property (sign steps are chaotic: another rounding, another trajectory), so the
    # verdict on so few probes is not a property of the code: measured on the earlier 5-probe protocol
    # (scripts/measure_drift.py) fp32 5/5 and fp16 4/5, exactly the one probe the gate allows, but fp32
    # 4/5 with ORT's basic graph optimisation. The figures and the verdict are checked for what they
    # are (written with allow_failed_gate, whatever the verdict).
    figures = convert_bundle(fp32, tmp_path / "fp16-e2e", "fp16", e2e_probes=1, allow_failed_gate=True)
    e2e = figures["mobileface"]["protection"]
    rank1_t = e2e["white_box_rank1_t"]
    assert e2e["allowed_drop"] == pytest.approx(1 / 10)  # one probe of ten (one per user)
    assert e2e["passed"] == (rank1_t["fp16"] >= rank1_t["fp32"] - e2e["allowed_drop"] - 1e-9)
    assert figures["mobileface"]["passed"] == e2e["passed"]  # the gradient gate passes (below): the e2e verdict decides
    assert rank1_t["fp32"] >= 0.4 and rank1_t["fp16"] >= 0.4  # both protect (4/5 or 5/5 measured): real scores

    # The gradient-fidelity gate alone (no end-to-end run): fp16 passes it with room (gradient cosine
    # 0.9986 and sign agreement 0.985 measured, gate 0.95 / 0.90), so the variant loads silently.
    figures = convert_bundle(fp32, tmp_path / "fp16", "fp16", e2e_probes=0)
    assert figures["mobileface"]["passed"] and figures["mobileface"]["name"] == "fp16"
    assert "protection" not in figures["mobileface"]
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
