"""Low-precision gradient graphs and the gate they must pass: fidelity of the GRADIENT, not the embedding.

Variants of a surrogate's gradient graph ``(x, cotangents) -> (embedding, grad)``:

* ``fp16``: weights and arithmetic in half precision, fp32 inputs and outputs
  (``onnxruntime.transformers.float16``, for GPU engines; ONNX Runtime's CPU provider runs it with
  casts).
* ``int8-forward``: ONNX Runtime static QDQ quantization of the forward half only: every node that
  depends on the cotangents (the backward pass) stays fp32 (the split measured best, see docs/design.md).
* ``int8``: the whole graph quantized.

INT8 scales are calibrated on real aligned face crops of the 5 users with real cotangents (the
embedding differences TIP-IM feeds the graph). Each variant is compared with the fp32 graph (itself
within 4e-7 of torch autograd for mobileface) on held-out crops: per target, the cosine of the
gradient and the fraction of pixels whose gradient SIGN agrees (the sign is what an L_inf step
uses), plus the embedding cosine, which the gate deliberately ignores: a graph can embed to 0.99
and still point the attack the wrong way. A variant passes when ``GATE`` holds.

Example:
    >>> report = precision_report(["mobileface"], num_targets=10)   # doctest: +SKIP
    >>> [(r["precision"], r["passed"]) for r in report["variants"]]  # doctest: +SKIP
    [('fp16', True), ('int8-forward', False), ('int8', False)]
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from edgecloak.errors import ModelError, OutputError
from edgecloak.evaluation.harness import EvalSettings, run_evaluation
from edgecloak.export.zoo.photos import identity_photos
from edgecloak.export.zoo.registry import ensure_detector
from edgecloak.runtime.align import CropGeometry, alignment_matrix, warp_face
from edgecloak.runtime.bundle import Bundle
from edgecloak.runtime.detect.mtcnn import MTCNNDetector
from edgecloak.runtime.image_io import load_image

PRECISIONS = ("fp16", "int8-forward", "int8")
# mean gradient cosine and sign agreement a low-precision graph must keep (GPU fp16 autograd
# measured 0.9999 / 0.994; a sign agreement of 0.9 still moves 80% of pixels the right way)
GATE = {"grad_cosine": 0.95, "sign_agreement": 0.90}
# how far the variant's white-box Rank-1-T may fall below fp32's: this fraction of the probes, and
# at least one probe (15 probes: one, 0.07; 5 probes: one, 0.2)
E2E_TOLERANCE = 0.1

Sample = tuple[np.ndarray, np.ndarray]  # (x [1,3,S,S] float32 0..255, cotangents [1,K,D])


@dataclass
class Fidelity:
    """How a variant's outputs compare with the fp32 graph's on held-out samples."""

    grad_cosine: float  # mean over samples and targets
    grad_cosine_min: float
    sign_agreement: float  # mean fraction of input pixels with the same gradient sign
    embedding_cosine: float
    ms_per_call: float
    reference_ms_per_call: float

    @property
    def passed(self) -> bool:
        return self.grad_cosine >= GATE["grad_cosine"] and self.sign_agreement >= GATE["sign_agreement"]


def graph_feeds(inputs: dict[str, Sequence[int]], x: np.ndarray, cotangents: np.ndarray) -> dict[str, np.ndarray]:
    """A gradient graph's inputs (``inputs``: name -> shape) for one sample, as the plain network:
    ``feature_keep`` all ones on graphs that have it.

    Example:
        >>> feeds = graph_feeds({"x": [1, 3, 2, 2], "cotangents": [1, 1, 4], "feature_keep": [1, 5]},
        ...                     np.zeros((1, 3, 2, 2)), np.zeros((1, 1, 4)))
        >>> sorted(feeds), float(feeds["feature_keep"].sum())
        (['cotangents', 'feature_keep', 'x'], 5.0)
    """
    feeds = {"x": x, "cotangents": cotangents}
    if "feature_keep" in inputs:
        feeds["feature_keep"] = np.ones(tuple(inputs["feature_keep"]), np.float32)
    return feeds


def _input_shapes(model) -> dict[str, list[int]]:
    return {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}


def backward_nodes(model) -> list[str]:
    """Names of the nodes that depend on the ``cotangents`` input (the VJP half of a gradient graph)."""
    tainted, names = {"cotangents"}, []
    for node in model.graph.node:  # ONNX requires topological order: one pass sees every dependency
        if any(i in tainted for i in node.input):
            names.append(node.name)
            tainted.update(node.output)
    return names


def make_variant(graph: Path, precision: str, out: Path, calibration: Sequence[Sample]) -> Path:
    """Write the ``precision`` variant of a fp32 gradient graph to ``out``."""
    import onnx  # optional: the export extra

    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16  # optional: needs onnx

        onnx.save(convert_float_to_float16(onnx.load(str(graph)), keep_io_types=True), str(out))
        return out
    if precision not in ("int8", "int8-forward"):
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    # optional: onnxruntime's quantizer needs onnx (the export extra)
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(graph))
    inputs = _input_shapes(model)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(calibration)

        def get_next(self):
            item = next(self.samples, None)
            return None if item is None else graph_feeds(inputs, item[0], item[1])

    exclude = backward_nodes(model) if precision == "int8-forward" else []
    quantize_static(str(graph), str(out), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    return out


def _session(path: Path):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # fp16 graphs make the CPU provider chatter about constant folding
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _timed_runs(session, samples: Sequence[Sample]) -> tuple[list, float]:
    inputs = {i.name: i.shape for i in session.get_inputs()}
    feeds = [graph_feeds(inputs, x, v) for x, v in samples]
    session.run(None, feeds[0])  # warm-up
    start = time.perf_counter()
    outs = [session.run(None, f) for f in feeds]
    return outs, (time.perf_counter() - start) / len(samples) * 1000.0


def measure_fidelity(reference: Path, variant: Path, samples: Sequence[Sample]) -> Fidelity:
    """Compare a variant with the fp32 graph on ``samples`` (see the module notes)."""
    want, ref_ms = _timed_runs(_session(reference), samples)
    got, ms = _timed_runs(_session(variant), samples)
    cosines, signs, emb = [], [], []
    for (e0, g0), (e1, g1) in zip(want, got):
        k = g0.shape[1]
        a, b = g0.reshape(k, -1).astype(np.float64), g1.reshape(k, -1).astype(np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        # a gradient that collapsed to zero points nowhere: cosine 0, not NaN
        cosines += list(np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-30), 0.0))
        signs += list((np.sign(a) == np.sign(b)).mean(1))
        emb.append(float((e0 * e1).sum() / max(np.linalg.norm(e0) * np.linalg.norm(e1), 1e-30)))
    return Fidelity(float(np.mean(cosines)), float(np.min(cosines)), float(np.mean(signs)), float(np.mean(emb)),
                    ms, ref_ms)


def face_samples(model_id: str, num_targets: int, per_identity: int = 6, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """(calibration, held-out) samples: real aligned crops of the 5 users, cotangents 2 w (f(x) - f(t))
    toward K other faces (w = 1/2, the two-surrogate ensemble); even photos calibrate, odd ones test."""
    import torch  # optional: the export extra

    from edgecloak.export.recognizers import Recognizer  # optional: the export extra (torch)

    rec = Recognizer.load(model_id)
    detector = MTCNNDetector.from_dir(ensure_detector())
    geometry = CropGeometry(rec.spec.input_size, rec.spec.crop_scale)
    crops = []
    for paths in identity_photos().values():
        for path in paths[:per_identity]:
            image = load_image(path)
            face = detector.largest_face(image, str(path))
            crop = warp_face(image, alignment_matrix(face.landmarks, geometry), geometry.size)
            crops.append(np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32))
    with torch.no_grad():
        embeddings = rec(torch.from_numpy(np.concatenate(crops))).numpy()
    rng = np.random.default_rng(seed)
    samples = []
    for i, crop in enumerate(crops):
        others = rng.choice([j for j in range(len(crops)) if j != i], num_targets, replace=False)
        samples.append((crop, (embeddings[i] - embeddings[others])[None].astype(np.float32)))
    return samples[0::2], samples[1::2]


def precision_report(model_ids: Sequence[str], num_targets: int = 10, out_dir: Path | None = None,
                     precisions: Sequence[str] = PRECISIONS) -> dict:
    """Make every variant of every surrogate's gradient graph, measure it, and gate it."""
    from edgecloak.export.bundle import cached_graph  # optional: the export extra (torch, onnx)
    from edgecloak.export.recognizers import Recognizer  # optional: the export extra (torch)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for model_id in model_ids:
            graph = cached_graph(Recognizer.load(model_id), "grad", num_targets)
            calibration, held_out = face_samples(model_id, num_targets)
            for precision in precisions:
                variant = make_variant(graph, precision, folder / f"{model_id}.{precision}.grad.onnx", calibration)
                fidelity = measure_fidelity(graph, variant, held_out)
                rows.append({"surrogate": model_id, "precision": precision, "passed": fidelity.passed,
                             **asdict(fidelity), "samples": len(held_out)})
    return {"gate": GATE, "num_targets": num_targets, "variants": rows}


def format_table(report: dict) -> str:
    """The report as a Markdown table (ratios of speed against fp32, same run, same machine)."""
    lines = ["| surrogate | precision | grad cosine (min) | sign agreement | embedding cosine | ms/call (x fp32) | gate |",
             "|---|---|---|---|---|---|---|"]
    for r in report["variants"]:
        lines.append(f"| {r['surrogate']} | {r['precision']} | {r['grad_cosine']:.4f} ({r['grad_cosine_min']:.3f}) | "
                     f"{r['sign_agreement']:.3f} | {r['embedding_cosine']:.4f} | {r['ms_per_call']:.1f} "
                     f"({r['ms_per_call'] / r['reference_ms_per_call']:.2f}x) | {'pass' if r['passed'] else 'FAIL'} |")
    return "\n".join(lines)


def protection_of(bundles: dict[str, Path], probes_per_identity: int, out: Path) -> dict[str, dict]:
    """End-to-end protection of each bundle on the evaluation protocol, scored by the fp32 recognizers
    (its white-box surrogates, through their torch modules): ``{name: summary row}``."""
    surrogates = sorted({s.id for path in bundles.values() for s in Bundle.load(path).surrogates})
    results = run_evaluation(EvalSettings(out=out, probes_per_identity=probes_per_identity, methods=(),
                                          evaluators=surrogates, transforms=("none",), sweeps=False,
                                          bundles=dict(bundles)), progress=False, log=lambda _m: None)
    return {s["method"]: s for s in results["summary"]}


def convert_bundle(source: Path, destination: Path, precision: str, allow_failed_gate: bool = False,
                   progress=None, e2e_probes: int = 3) -> dict:
    """A copy of a (fp32) bundle whose gradient graphs are the ``precision`` variant, each measured
    and gated; the figures go into the manifest (``surrogates[i].precision``) and the copy is
    re-hashed. Two gates: gradient fidelity per surrogate (``GATE``), and end-to-end protection
    (``e2e_probes`` probes per user, 0 skips it): the variant's white-box Rank-1-T may fall at
    most ``E2E_TOLERANCE`` of the probes (at least one probe) below the fp32 bundle's, both scored
    by the fp32 recognizers. A variant
    that fails a gate is refused (``ModelError``) unless ``allow_failed_gate``; the runtime then
    warns whenever it loads the bundle.

    Example:
        >>> convert_bundle(Path("bundles/edge"), Path("bundles/edge-fp16"), "fp16")  # doctest: +SKIP
    """
    say = progress or (lambda _m: None)
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    bundle = Bundle.load(source)
    destination = Path(destination)
    if destination.exists():
        raise OutputError(f"{destination}: already exists; choose another folder")
    staging = destination.with_name(f".{destination.name}.converting")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(bundle.root, staging)
    manifest = copy.deepcopy(bundle.manifest)  # the verified manifest, rewritten through its one writer
    figures = {}
    try:
        for entry in manifest.surrogates:
            if entry.precision_name != "fp32":
                raise ModelError(f"{source}: {entry.id} is already {entry.precision_name}; convert an fp32 bundle")
            say(f"{entry.id}: {precision} variant, measured against fp32 on held-out face crops")
            fp32 = bundle.root / entry.grad_graph
            calibration, held_out = face_samples(entry.id, bundle.num_targets)
            variant = make_variant(fp32, precision, staging / entry.grad_graph, calibration)
            fidelity = measure_fidelity(fp32, variant, held_out)
            entry.precision = {"name": precision, "gate": GATE, "passed": fidelity.passed, **asdict(fidelity)}
            if entry.held_grad_graph:  # the single-target graph runs most steps: same precision, same gate
                held_calibration, held_held_out = face_samples(entry.id, 1)
                held_variant = make_variant(bundle.root / entry.held_grad_graph, precision,
                                            staging / entry.held_grad_graph, held_calibration)
                held = measure_fidelity(bundle.root / entry.held_grad_graph, held_variant, held_held_out)
                entry.precision["held_grad_graph"] = asdict(held)
                if not held.passed:  # the load-time warning quotes the failing graph's figures
                    entry.precision.update(passed=False, grad_cosine=min(fidelity.grad_cosine, held.grad_cosine),
                                           sign_agreement=min(fidelity.sign_agreement, held.sign_agreement))
                    fidelity = held
            figures[entry.id] = entry.precision
            if not fidelity.passed and not allow_failed_gate:
                raise ModelError(
                    f"{entry.id} {precision}: gradient cosine {fidelity.grad_cosine:.3f}, sign agreement "
                    f"{fidelity.sign_agreement:.3f} fail the gate ({GATE['grad_cosine']}, {GATE['sign_agreement']}); "
                    "keep fp32 (or pass --allow-failed-gate to write it anyway)")
        manifest.hash_files(staging)
        manifest.write(staging)
        if e2e_probes > 0:
            say(f"end-to-end protection, fp32 vs {precision} ({e2e_probes} probe(s) per user)")
            with tempfile.TemporaryDirectory() as tmp:
                rows = protection_of({"fp32": bundle.root, precision: staging}, e2e_probes, Path(tmp))
            e2e = {"probes_per_identity": e2e_probes, "tolerance": E2E_TOLERANCE,
                   "white_box_rank1_t": {"fp32": rows["fp32"]["white_box_rank1_t"],
                                         precision: rows[precision]["white_box_rank1_t"]},
                   "white_box_rank1_ut": {"fp32": rows["fp32"]["white_box_rank1_ut"],
                                          precision: rows[precision]["white_box_rank1_ut"]}}
            # at most E2E_TOLERANCE of the probes fewer, and never less than one probe (small runs)
            probes = rows["fp32"]["probes"]
            allowed = max(1, math.floor(E2E_TOLERANCE * probes)) / probes
            e2e["allowed_drop"] = allowed
            e2e["passed"] = e2e["white_box_rank1_t"][precision] >= e2e["white_box_rank1_t"]["fp32"] - allowed - 1e-9
            for entry in manifest.surrogates:
                entry.precision["protection"] = e2e
                entry.precision["passed"] = bool(entry.precision["passed"] and e2e["passed"])
            manifest.write(staging)
            if not e2e["passed"] and not allow_failed_gate:
                raise ModelError(
                    f"{precision}: white-box Rank-1-T {e2e['white_box_rank1_t'][precision]:.2f} vs fp32 "
                    f"{e2e['white_box_rank1_t']['fp32']:.2f} falls more than {allowed:.2f} (end-to-end gate); "
                    "keep fp32 (or pass --allow-failed-gate)")
        os.replace(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return figures
