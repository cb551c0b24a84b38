"""Measure how far the float-sensitive test quantities drift with thread counts and CPU code paths.

The tests under ``tests/`` compare engines (ONNX Runtime vs torch autograd, fused vs unfused
converters, the runtime loop vs the torch oracle) and gate on measured figures (AUC, self-check
margins). Their tolerances must hold on any machine, so they are derived from what this script
prints: the comparisons of those tests, each variant in a fresh process:

* thread counts 1 and 2 (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``EDGECLOAK_THREADS`` which sets
  the ORT session threads, ``torch.set_num_threads``),
* torch without oneDNN (``torch.backends.mkldnn.enabled = False``), oneDNN capped to SSE4.1
  (``ONEDNN_MAX_CPU_ISA``/``DNNL_MAX_CPU_ISA``; on an AVX2-only CPU an AVX2 cap is a no-op),
  ATen's scalar kernels (``ATEN_CPU_CAPABILITY=default``),
* the runtime's ONNX Runtime sessions with basic graph optimisation only (no fused kernels).

Groups (``--list``): ``parity`` / ``early-stop`` / ``bench`` (runtime loop vs the torch oracle, the
tests' settings plus shorter ones), ``perturb`` (the runtime against itself with relative float
noise of 1e-6 / 1e-5 / 1e-4 on its gradients: the measured engine-to-engine size, and far worse),
``mutants`` (the runtime with planted bugs vs the oracle: what a tolerance must still catch),
``stop-trace`` (how decided the early-stop step is), ``backend-grad`` / ``gradgraph`` / ``tfjs`` /
``tipim`` (gradient comparisons), ``recognizers`` (AUC), ``cli`` / ``cli-photos`` / ``cli-chosen``
(self-check margins of the CLI test), ``whitebox`` / ``whitebox-seeds``, ``precision`` /
``precision-e2e``. ``--seeds`` gives the chaotic groups other diversity seeds: another trajectory,
which is what a different rounding anywhere amounts to.

Usage (what the tests' comments quote was measured with these, on a 2-core AMD EPYC, AVX2):
    python scripts/measure_drift.py --variants t1,t2 --groups parity,early-stop,cli,bench --seeds 0,1,2
    python scripts/measure_drift.py --variants t1-nomkldnn,t2-nomkldnn,t2-sse41,t1-aten-default,t2-ort-basic,t1-ort-basic \
        --groups parity,early-stop,bench,backend-grad
    python scripts/measure_drift.py --variants t2,t1,t1-nomkldnn,t2-sse41,t1-aten-default,t2-ort-basic \
        --groups gradgraph,tfjs,tipim,whitebox,precision,precision-e2e
    python scripts/measure_drift.py --variants t2 --groups perturb,mutants,stop-trace,cli-photos --seeds 0,1,2,3
    python scripts/measure_drift.py --summary-only --variants t2,t1,...   # the tables again
Each run takes minutes to an hour on 2 cores. Results: printed tables, and JSON + arrays in
``--out`` (default ``$TMPDIR/edgecloak-drift``; runs of other groups accumulate there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (environment, in-process switches)
VARIANTS: dict[str, tuple[dict[str, str], dict[str, object]]] = {
    "t1": ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EDGECLOAK_THREADS": "1"}, {"torch_threads": 1}),
    "t2": ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "EDGECLOAK_THREADS": "2"}, {"torch_threads": 2}),
    "t1-nomkldnn": ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EDGECLOAK_THREADS": "1"},
                    {"torch_threads": 1, "mkldnn": False}),
    "t2-nomkldnn": ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "EDGECLOAK_THREADS": "2"},
                    {"torch_threads": 2, "mkldnn": False}),
    "t2-sse41": ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "EDGECLOAK_THREADS": "2",
                  "ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "SSE41"}, {"torch_threads": 2}),
    "t1-aten-default": ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EDGECLOAK_THREADS": "1",
                         "ATEN_CPU_CAPABILITY": "default"}, {"torch_threads": 1}),
    "t2-ort-basic": ({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "EDGECLOAK_THREADS": "2"},
                     {"torch_threads": 2, "ort_level": "basic"}),
    "t1-ort-basic": ({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "EDGECLOAK_THREADS": "1"},
                     {"torch_threads": 1, "ort_level": "basic"}),
}


# -- in the worker -------------------------------------------------------------------------------

def _apply_switches(switches: dict[str, object]) -> None:
    import torch

    torch.set_num_threads(int(switches.get("torch_threads", torch.get_num_threads())))
    if switches.get("mkldnn") is False:
        torch.backends.mkldnn.enabled = False
    level = switches.get("ort_level")
    if level:
        import onnxruntime as ort

        from edgecloak.runtime.backends import onnxruntime as ort_backend

        real = ort_backend.session_options
        wanted = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[str(level)]

        def options(threads: int = 0):
            opts = real(threads)
            opts.graph_optimization_level = wanted
            return opts

        ort_backend.session_options = options


def _tests_module(name: str):
    sys.path.insert(0, str(ROOT / "tests"))
    import importlib

    return importlib.import_module(name)


class Shared:
    """What several groups load once per worker."""

    def __init__(self):
        self._cache: dict = {}

    def get(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def recognizer(self, model_id):
        from edgecloak.export.recognizers import Recognizer

        return self.get(("rec", model_id), lambda: Recognizer.load(model_id))

    def detector(self):
        from edgecloak.export.zoo.registry import ensure_detector
        from edgecloak.runtime.detect.mtcnn import MTCNNDetector

        return self.get("detector", lambda: MTCNNDetector.from_dir(ensure_detector()))

    def sample_face(self):
        from edgecloak.export.zoo.photos import sample_photo
        from edgecloak.runtime.image_io import load_image

        def make():
            image = load_image(sample_photo())
            return image, self.detector().detect(image)[0]

        return self.get("sample", make)

    def celeb_faces(self):
        """tests/conftest.py's celeb_faces: every photo of the 5 identities with its largest face."""
        from edgecloak.export.zoo.photos import identity_photos
        from edgecloak.runtime.image_io import load_image

        conftest = _tests_module("conftest")

        def make():
            out = []
            for identity, paths in identity_photos().items():
                for path in paths:
                    image = load_image(path)
                    found = self.detector().detect(image)
                    face = max(found, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])), default=None)
                    out.append(conftest.PhotoFace(identity, path, image, face))
            return out

        return self.get("celeb", make)

    def mobileface_bundle(self, workdir: Path):
        """The same bundle the runtime tests export (mobileface, K 10, torch programs), once per machine."""
        from edgecloak.export.bundle import export_bundle
        from edgecloak.runtime.config import TIPIMConfig

        path = workdir / "bundle-mobileface"
        if not (path / "manifest.json").exists():
            export_bundle(path, ["mobileface"], TIPIMConfig(steps=10), num_targets=10, with_torch=True)
        return path



def _sample_region(shared, bundle_path, backend):
    """The sample photo's face on the runtime: (image, face, protector, targets, region, region pixels)."""
    import numpy as np

    from edgecloak.runtime.face_region import FaceRegion
    from edgecloak.runtime.protector import RuntimeProtector

    image, face = shared.sample_face()
    protector = RuntimeProtector.from_bundle(bundle_path, backend)
    targets = protector.targets.excluding_lookalikes(protector.embed_face(image, face.landmarks))
    region = FaceRegion.around(face.landmarks, image.shape[:2], protector.geometries)
    x0, y0, x1, y1 = region.box
    pixels = np.ascontiguousarray(image[y0:y1, x0:x1].transpose(2, 0, 1)[None], dtype=np.float32)
    return image, face, protector, targets, region, pixels

def _loop_pair(shared, bundle_path, config, backend):
    """The runtime loop and the torch oracle on the sample face (as tests/test_runtime.py does),
    plus the final per-target gains of each result (how decided the target choice is)."""
    import numpy as np
    import torch

    from edgecloak.export.reference.oracle import TIPIM
    from edgecloak.export.reference.view import FaceView
    from edgecloak.runtime.tipim import RuntimeTIPIM, face_sampler

    image, face, protector, targets, region, pixels = _sample_region(shared, bundle_path, backend)
    loop = RuntimeTIPIM(protector.engines, config)
    t0 = time.perf_counter()
    got = loop.run(pixels, region, targets)
    t_runtime = time.perf_counter() - t0
    plain = {e.id: face_sampler(region, e.id, e.files.input_size, None) for e in protector.engines}
    real = loop.embed(pixels, plain)
    final_gains_runtime = loop.gain(loop.embed(got.region, plain), real, targets)[0]
    view = FaceView.around(face.landmarks, image.shape[:2], protector.geometries)
    ref = TIPIM([shared.recognizer("mobileface")], config)
    t0 = time.perf_counter()
    want = ref.run(torch.from_numpy(pixels), view, targets)
    t_ref = time.perf_counter() - t0
    final_gains_ref = loop.gain(loop.embed(want.region.numpy(), plain), real, targets)[0]
    limit = np.floor(config.eps * region.edge_weight_map())
    return {
        "got": got.region, "want": want.region.numpy(), "pixels": pixels, "limit": limit,
        "gains_got": np.array(got.gains), "gains_want": np.array(want.gains),
        "target_got": got.target_index, "target_want": want.target_index,
        "final_gains_got": final_gains_runtime, "final_gains_want": final_gains_ref,
        "seconds": (t_runtime, t_ref),
    }


def _top2_gap(gains):
    import numpy as np

    g = np.sort(np.asarray(gains, dtype=np.float64))[::-1]
    return float(g[0] - g[1]) if len(g) > 1 else float("inf")


def _pair_figures(pair) -> dict:
    import numpy as np

    diff = np.abs(pair["got"] - pair["want"])
    n = min(len(pair["gains_got"]), len(pair["gains_want"]))
    return {
        "max_diff": float(diff.max()),
        "frac_gt1": float((diff > 1).mean()),
        "frac_gt0": float((diff > 0).mean()),
        "targets": [int(pair["target_got"]), int(pair["target_want"])],
        "gains_max_abs": float(np.abs(pair["gains_got"][:n] - pair["gains_want"][:n]).max()),
        "final_gain_got": float(pair["gains_got"].max()), "final_gain_want": float(pair["gains_want"].max()),
        "steps": [len(pair["gains_got"]), len(pair["gains_want"])],
        "top2_gap_got": _top2_gap(pair["final_gains_got"]), "top2_gap_want": _top2_gap(pair["final_gains_want"]),
        "within_eps": bool((np.abs(pair["got"] - pair["pixels"]) <= pair["limit"] + 1e-6).all()
                           and (np.abs(pair["want"] - pair["pixels"]) <= pair["limit"] + 1e-6).all()),
        "seconds": [round(s, 2) for s in pair["seconds"]],
    }


PARITY = {
    "linf-diversity": {"steps": 20},
    "l2": {"steps": 8, "norm": "l2", "eps_l2": 1500.0, "diversity": None},
    "mmd": {"steps": 8, "gamma": 0.5, "mmd_batch": 4},
    "rescore": {"steps": 12, "rescore_every": 4, "settle_after": 2},
    # candidates for a deterministic comparison: fewer steps, no diversity
    "linf-nodiv-4": {"steps": 4, "diversity": None},
    "linf-div-4": {"steps": 4},
    "rescore-4": {"steps": 4, "rescore_every": 4, "settle_after": 2},
}


def group_parity(shared, workdir, arrays, seeds):
    from edgecloak.runtime.config import TIPIMConfig

    bundle = shared.mobileface_bundle(workdir)
    out = {}
    for backend in ("onnxruntime", "torch"):
        for name, settings in PARITY.items():
            for seed in seeds:
                pair = _loop_pair(shared, bundle, TIPIMConfig(seed=seed, **settings), backend)
                key = f"{backend}/{name}/seed{seed}"
                out[key] = _pair_figures(pair)
                arrays[f"parity/{key}/got"] = pair["got"]
                arrays[f"parity/{key}/want"] = pair["want"]
                print(f"  parity {key}: {out[key]}", flush=True)
    return out


class _Noisy:
    """An engine whose outputs carry relative float noise of the size measured between engines
    (gradients ~4e-7 relative L2, embeddings ~1e-7): a simulated other machine."""

    def __init__(self, engine, seed, grad_noise=1e-6, emb_noise=1e-7):
        import numpy as np

        self._engine, self._rng = engine, np.random.default_rng(seed)
        self.grad_noise, self.emb_noise = grad_noise, emb_noise
        self.id, self.files = engine.id, engine.files

    def embed_and_grad(self, crop, cotangents):
        emb, grad = self._engine.embed_and_grad(crop, cotangents)
        grad = grad * (1 + self.grad_noise * self._rng.standard_normal(grad.shape, dtype="float32"))
        emb = emb * (1 + self.emb_noise * self._rng.standard_normal(emb.shape, dtype="float32"))
        return emb, grad

    def embed(self, crops):
        emb = self._engine.embed(crops)
        return emb * (1 + self.emb_noise * self._rng.standard_normal(emb.shape, dtype="float32"))


def group_perturb(shared, workdir, arrays, seeds, noise_runs=12, levels=(1e-6, 1e-5, 1e-4)):
    """Simulated drift: the runtime loop (ONNX Runtime) against itself with relative float noise on its
    gradients and embeddings: 1e-6 / 1e-7 is the measured engine-to-engine size, 1e-5 and 1e-4
    stand for machines far worse than any measured (``noise_runs`` draws per setting and level)."""
    import numpy as np

    from edgecloak.runtime.config import TIPIMConfig
    from edgecloak.runtime.tipim import RuntimeTIPIM

    image, face, protector, targets, region, pixels = _sample_region(shared, shared.mobileface_bundle(workdir), "onnxruntime")
    settings_all = {**PARITY, "early-stop": {"steps": 40, "stop_margin": 0.1},
                    "early-stop-0.075": {"steps": 40, "stop_margin": 0.075}}
    out = {}
    for level in levels:
        for name, settings in settings_all.items():
            config = TIPIMConfig(**settings)
            clean = RuntimeTIPIM(protector.engines, config).run(pixels, region, targets)
            fracs, maxes, targets_seen, steps_seen, gain_diffs = [], [], set(), set(), []
            for n in range(noise_runs):
                engines = [_Noisy(e, 1000 + n, level, level / 10) for e in protector.engines]
                noisy = RuntimeTIPIM(engines, config).run(pixels, region, targets)
                d = np.abs(noisy.region - clean.region)
                fracs.append(float((d > 1).mean()))
                maxes.append(float(d.max()))
                targets_seen.add(noisy.target_index)
                steps_seen.add(len(noisy.gains))
                k = min(len(noisy.gains), len(clean.gains))
                gain_diffs.append(float(np.abs(np.array(noisy.gains[:k]) - np.array(clean.gains[:k])).max()))
            key = f"noise{level:g}/{name}"
            out[key] = {"worst_frac_gt1": max(fracs), "runs_with_diff_gt1": int(sum(m > 1 for m in maxes)),
                        "runs": noise_runs, "worst_max_diff": max(maxes),
                        "targets": sorted(targets_seen | {clean.target_index}),
                        "steps": sorted(steps_seen | {len(clean.gains)}), "worst_gain_diff": max(gain_diffs),
                        "clean_final_gain": float(max(clean.gains))}
            print(f"  perturb {key}: {out[key]}", flush=True)
    return out


def group_early_stop(shared, workdir, arrays, seeds):
    import numpy as np

    from edgecloak.runtime.config import TIPIMConfig

    bundle = shared.mobileface_bundle(workdir)
    out = {}
    for margin in (0.1, 0.075):  # the test's old margin and its new one
        for seed in seeds:
            pair = _loop_pair(shared, bundle, TIPIMConfig(steps=40, stop_margin=margin, seed=seed), "onnxruntime")
            fig = _pair_figures(pair)
            steps = len(pair["gains_got"])
            again = _loop_pair(shared, bundle, TIPIMConfig(steps=steps, seed=seed), "onnxruntime")
            fig["runtime_full_equals_stopped"] = bool(np.array_equal(again["got"], pair["got"]))
            fig["reference_full_equals_stopped"] = bool(len(pair["gains_want"]) != steps
                                                        or np.array_equal(again["want"], pair["want"]))
            out[f"margin{margin}/seed{seed}"] = fig
            print(f"  early-stop margin{margin}/seed{seed}: {fig}", flush=True)
    return out


def group_backend_grad(shared, workdir, arrays, seeds):
    """tests/test_runtime.py::test_backend_gradients_match_torch_autograd."""
    import numpy as np
    import torch

    from edgecloak.runtime.backends import backend_class
    from edgecloak.runtime.bundle import Bundle

    files = Bundle.load(shared.mobileface_bundle(workdir)).surrogates[0]
    rec = shared.recognizer("mobileface")
    out = {}
    for backend in ("onnxruntime", "torch"):
        engine = backend_class(backend)().load(files)
        rng = np.random.default_rng(0)
        crop = (rng.random((1, 3, 112, 112)) * 255).astype(np.float32)
        cot = rng.standard_normal((1, 10, 256)).astype(np.float32)
        emb, grad = engine.embed_and_grad(crop, cot)
        x = torch.from_numpy(crop).requires_grad_(True)
        e = rec(x)
        want = torch.stack([torch.autograd.grad(e, x, torch.from_numpy(cot[:, k]), retain_graph=True)[0][0]
                            for k in range(10)]).numpy()
        batch = np.concatenate([crop, crop[:, :, ::-1].copy(), crop * 0.5])
        out[backend] = {
            "grad_rel_l2": float(np.linalg.norm(grad[0] - want) / np.linalg.norm(want)),
            "emb_max_abs": float(np.abs(emb - e.detach().numpy()).max()),
            "batch_emb_max_abs": float(np.abs(engine.embed(batch) - rec(torch.from_numpy(batch)).detach().numpy()).max()),
        }
        print(f"  backend-grad {backend}: {out[backend]}", flush=True)
    return out


def group_gradgraph(shared, workdir, arrays, seeds):
    """tests/test_gradgraph.py: ORT gradient / embedding graphs vs torch autograd, per surrogate."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from edgecloak.export.bundle import cached_graph

    tg = _tests_module("test_gradgraph")
    out = {}
    opts = ort.SessionOptions()
    from edgecloak.runtime.backends.onnxruntime import session_options

    for model_id in tg.MODELS:
        rec = shared.recognizer(model_id)
        s, d = rec.input_size, rec.spec.embedding_dim
        x, v = tg.image_like(s), tg.cotangents(d)
        xr = x.clone().requires_grad_(True)
        emb = rec(xr)
        want = torch.stack([torch.autograd.grad(emb, xr, v[:, k], retain_graph=True)[0] for k in range(tg.K)], 1).numpy()
        row = {}
        # the test's session (ORT defaults) and the runtime's (session_options: threads, level)
        for label, so in (("default-session", opts), ("runtime-session", session_options())):
            sess = ort.InferenceSession(str(cached_graph(rec, "grad", tg.K)), so, providers=["CPUExecutionProvider"])
            got_e, got = sess.run(["embedding", "grad"], {"x": x.numpy(), "cotangents": v.numpy()})
            row[label] = {"grad_rel_l2": float(np.linalg.norm(got - want) / np.linalg.norm(want)),
                          "emb_max_abs": float(np.abs(got_e - emb.detach().numpy()).max())}
        sess = ort.InferenceSession(str(cached_graph(rec, "embed", tg.K)), opts, providers=["CPUExecutionProvider"])
        batch = torch.cat([tg.image_like(s), tg.image_like(s).flip(3), tg.image_like(s) * 0.5])
        with torch.no_grad():
            want_b = rec(batch).numpy()
        row["embed_graph_max_abs"] = max(
            float(np.abs(sess.run(["embedding"], {"x": batch[:b].numpy()})[0] - want_b[:b]).max()) for b in (1, 3))
        out[model_id] = row
        print(f"  gradgraph {model_id}: {row}", flush=True)
    return out


def group_tfjs(shared, workdir, arrays, seeds):
    """tests/test_convert_tfjs.py: fused vs unfused (float32), batch vs singles, channels-last grads."""
    import copy

    import numpy as np
    import torch

    from edgecloak.export.convert.tfjs import convert, input_size

    tt = _tests_module("test_convert_tfjs")
    out = {}
    for name, node, _expected, dim in tt.MODELS:
        path = tt.model_json(name)
        fused = convert(path, node)
        unfused = convert(path, fused.output_node, fuse=False)
        images = tt.synthetic_faces(input_size(path))
        x = tt.to_nchw(images)
        v = torch.from_numpy(np.random.default_rng(2).standard_normal((2, dim)).astype(np.float32))
        out64, grad64 = tt._out_and_grad(copy.deepcopy(fused).double(), x.double(), v.double())
        ref64, refgrad64 = tt._out_and_grad(copy.deepcopy(unfused).double(), x.double(), v.double())
        o, g = tt._out_and_grad(fused, x, v)
        r, rg = tt._out_and_grad(unfused, x, v)
        cos = torch.nn.functional.cosine_similarity(g.flatten().double(), rg.flatten().double(), dim=0)
        with torch.no_grad():
            both = fused(x)
            singles = torch.cat([fused(x[i: i + 1]) for i in range(2)])
        row = {
            "f64_out_rel": tt._rel(out64, ref64), "f64_grad_rel": tt._rel(grad64, refgrad64),
            "f32_out_rel": tt._rel(o, r), "f32_grad_1_minus_cosine": 1.0 - float(cos),
            "f32_grad_rel_norm": float((g - rg).norm() / rg.norm()),
            "f32_fused_vs_f64_grad_rel_norm": float((g.double() - grad64).norm() / grad64.norm()),
            "f32_unfused_vs_f64_grad_rel_norm": float((rg.double() - refgrad64).norm() / refgrad64.norm()),
            "batch_vs_singles_rel": float((both - singles).abs().max() / both.abs().max()),
        }
        out[name] = row
        print(f"  tfjs {name}: {row}", flush=True)
    net = convert(tt.model_json("mobileface"))
    x = tt.to_nchw(tt.synthetic_faces(112, batch=2)).requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x).square().sum(), x)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    (grad_cl,) = torch.autograd.grad(net(x_cl).square().sum(), x_cl)
    out["channels_last_grad_max_abs_rel"] = float((grad_cl - grad).abs().max() / grad.abs().max())
    print(f"  tfjs channels-last: {out['channels_last_grad_max_abs_rel']}", flush=True)
    return out


def group_recognizers(shared, workdir, arrays, seeds):
    """tests/test_recognizers.py: leave-one-out AUC and rank-1 per recognizer on the 5-identity set."""
    import numpy as np

    from edgecloak.export.reference.targets import embed_faces
    from edgecloak.export.zoo.registry import recognizer_ids

    tr = _tests_module("test_recognizers")
    faces = [(p.identity, p.image, p.face) for p in shared.celeb_faces() if p.face is not None]
    labels = np.array([f[0] for f in faces])
    out = {"faces": len(faces)}
    for model_id in recognizer_ids():
        emb = embed_faces([(img, face.landmarks) for _, img, face in faces], [shared.recognizer(model_id)])[model_id].numpy()
        sims = emb @ emb.T
        same = labels[:, None] == labels[None, :]
        upper = np.triu(np.ones_like(same), k=1).astype(bool)
        auc = tr.pairwise_auc(sims[same & upper], sims[~same & upper])
        np.fill_diagonal(sims, -np.inf)
        rank1 = float((labels[sims.argmax(1)] == labels).mean())
        out[model_id] = {"auc": auc, "rank1": rank1}
        print(f"  recognizers {model_id}: {out[model_id]}", flush=True)
    return out


def group_cli(shared, workdir, arrays, seeds):
    """tests/test_cli.py export-then-protect: the self-check margin on the sample, per setting.

    The bundle is the CLI test's (edge preset exported with 3 steps); protect runs with retries 1
    (what the CLI gives a --bundle). Seeds stand in for the trajectory changes a different
    rounding causes."""
    from edgecloak.cloaker import Cloaker, SafetyPolicy
    from edgecloak.export.zoo.photos import sample_photo
    from edgecloak.runtime.image_io import load_image

    bundle = workdir / "bundle-edge-3"
    if not (bundle / "manifest.json").exists():
        done = subprocess.run([sys.executable, "-m", "edgecloak.cli.main", "export", "-o", str(bundle), "--preset", "edge",
                               "--steps", "3"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    image = load_image(sample_photo())
    out = {}
    cases = [
        ("edge-s16-r1", dict(steps=16), 1),
        ("edge-s32-r1", dict(steps=32), 1),
        ("edge-s48-r0", dict(steps=48), 0),
        ("edge-s50-a1.5-r1", dict(steps=50, alpha=1.5), 1),
        ("edge-s16-nodiv-r1", dict(steps=16, diversity=None), 1),
        ("edge-s32-nodiv-r1", dict(steps=32, diversity=None), 1),
    ]
    for name, settings, retries in cases:
        for seed in seeds:
            cloaker = Cloaker.load(bundle=bundle, backend="auto", policy=SafetyPolicy(retries=retries, on_fail="keep"),
                                   seed=seed, **settings)
            t0 = time.perf_counter()
            result = cloaker.protect(image)
            face = result.faces[0]
            out[f"{name}/seed{seed}"] = {"margin": face.margin, "steps": face.steps, "action": face.action,
                                          "target": face.target, "seconds": round(time.perf_counter() - t0, 2)}
            print(f"  cli {name}/seed{seed}: {out[f'{name}/seed{seed}']}", flush=True)
    return out


def group_cli_photos(shared, workdir, arrays, seeds):
    """Which photo protects with a wide self-check margin on the CLI test's bundle (edge, mobileface)?
    Per photo (the sample and the first two of each identity) and setting, the margin per seed."""
    from edgecloak.cloaker import Cloaker, SafetyPolicy
    from edgecloak.export.zoo.photos import identity_photos, sample_photo
    from edgecloak.runtime.image_io import load_image

    bundle = workdir / "bundle-edge-3"
    if not (bundle / "manifest.json").exists():
        done = subprocess.run([sys.executable, "-m", "edgecloak.cli.main", "export", "-o", str(bundle), "--preset", "edge",
                               "--steps", "3"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    photos = [sample_photo()] + [p for ps in identity_photos().values() for p in sorted(ps)[:2]]
    out = {}
    for settings_name, settings in (("s16-r1", dict(steps=16)), ("s32-r1", dict(steps=32))):
        cloakers = {seed: Cloaker.load(bundle=bundle, backend="auto", policy=SafetyPolicy(retries=1, on_fail="keep"),
                                       seed=seed, **settings) for seed in seeds}
        for photo in photos:
            image = load_image(photo)
            margins, steps = [], []
            for seed in seeds:
                try:
                    face = cloakers[seed].protect(image).faces[0]
                except Exception as exc:  # no face etc.
                    margins.append(float("nan"))
                    steps.append(str(exc)[:40])
                    continue
                margins.append(round(face.margin, 3) if face.margin is not None else float("nan"))
                steps.append(face.steps)
            key = f"{settings_name}/{photo.name[:40]}"
            out[key] = {"min_margin": min(margins), "margins": margins, "steps": steps}
            print(f"  cli-photos {key}: {out[key]}", flush=True)
    return out


CLI_PHOTO = ("ben_afflek", "httpimagesfandangocom")  # the CLI test's photo: identity, file name prefix


def group_cli_chosen(shared, workdir, arrays, seeds):
    """The CLI test's photo and settings (edge bundle, 16 steps, retries 1): margin per seed."""
    from edgecloak.cloaker import Cloaker, SafetyPolicy
    from edgecloak.export.zoo.photos import identity_photos
    from edgecloak.runtime.image_io import load_image

    bundle = workdir / "bundle-edge-3"
    if not (bundle / "manifest.json").exists():
        done = subprocess.run([sys.executable, "-m", "edgecloak.cli.main", "export", "-o", str(bundle), "--preset", "edge",
                               "--steps", "3"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    photo = next(p for p in identity_photos()[CLI_PHOTO[0]] if p.name.startswith(CLI_PHOTO[1]))
    image = load_image(photo)
    out = {}
    for seed in seeds:
        cloaker = Cloaker.load(bundle=bundle, backend="auto", policy=SafetyPolicy(retries=1, on_fail="keep"),
                               seed=seed, steps=16)
        result = cloaker.protect(image)
        out[f"seed{seed}"] = {"faces": len(result.faces), "margin": result.faces[0].margin,
                              "steps": result.faces[0].steps, "max_change": result.max_abs_change}
        print(f"  cli-chosen seed{seed}: {out[f'seed{seed}']}", flush=True)
    return out


def group_bench(shared, workdir, arrays, seeds):
    """tests/test_cli.py::test_bench_prints_json_and_a_table: edgecloak bench's max_diff_vs_reference
    (runtime/onnxruntime vs reference-batched, i.e. the torch oracle, 2 steps, mobileface), and how
    many pixels differ."""
    import numpy as np

    from edgecloak.bench import timed_protect
    from edgecloak.export.bundle import default_bundle
    from edgecloak.export.reference.oracle import TIPIM, protect_face
    from edgecloak.runtime.bundle import Bundle
    from edgecloak.runtime.protector import RuntimeProtector

    image, _ = shared.sample_face()
    bundle = Bundle.load(default_bundle(["mobileface"], 10))
    out = {}
    for steps in (1, 2, 3):
        for seed in seeds:
            from edgecloak.runtime.config import TIPIMConfig

            config = TIPIMConfig(steps=steps, seed=seed)
            runtime = RuntimeProtector.from_bundle(bundle, "onnxruntime", steps=steps, seed=seed)
            face = runtime.detector.detect(image)[0]
            targets = bundle.targets.excluding_lookalikes(runtime.embed_face(image, face.landmarks))
            _, _, got, t_got = timed_protect(runtime, image, face.landmarks, targets)
            oracle = protect_face(TIPIM([shared.recognizer("mobileface")], config), image, face.landmarks, targets)
            want, t_want = oracle.region, oracle.target_index
            diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
            out[f"steps{steps}/seed{seed}"] = {"max_diff": int(diff.max()), "frac_gt1": float((diff > 1).mean()),
                                              "frac_gt0": float((diff > 0).mean()), "targets": [int(t_got), int(t_want)]}
            print(f"  bench steps{steps}/seed{seed}: {out[f'steps{steps}/seed{seed}']}", flush=True)
    return out


def group_tipim(shared, workdir, arrays, seeds):
    """tests/test_tipim.py: batched vs per-target gradients; white-box protection counts."""
    import numpy as np
    import torch

    from edgecloak.export.reference.oracle import TIPIM
    from edgecloak.export.reference.targets import geometries_of
    from edgecloak.export.reference.view import FaceView
    from edgecloak.runtime.config import TIPIMConfig
    from edgecloak.export.zoo.photos import identity_photos
    from edgecloak.runtime.image_io import load_image

    rec = shared.recognizer("mobileface")
    det = shared.detector()
    first = next(p for ps in identity_photos().values() for p in ps)
    image = load_image(first)
    face = max(det.detect(image), key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
    view = FaceView.around(face.landmarks, image.shape[:2], geometries_of([rec]))
    x0, y0, x1, y1 = view.box
    x = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    attack = TIPIM([rec], TIPIMConfig())
    cot = [torch.randn(3, rec.spec.embedding_dim, generator=torch.Generator().manual_seed(0))]
    batched = attack.identity_gradients(x, view, cot)
    worst = 0.0
    for k in range(3):
        xv = x.clone().requires_grad_(True)
        e = rec(view.crops(xv.round() + (xv - xv.detach()))["mobileface"])
        (g,) = torch.autograd.grad((e * cot[0][k]).sum(), xv)
        # the test's allclose(rtol=1e-4, atol=1e-6 max|g|): the worst |a-b| / (atol + rtol |b|)
        ratio = ((batched[k] - g[0]).abs() / (1e-6 * g.abs().max() + 1e-4 * g[0].abs())).max().item()
        worst = max(worst, ratio)
    out = {"batched_vs_separate_allclose_ratio": worst}
    print(f"  tipim batched-vs-separate: {out}", flush=True)
    return out


def _whitebox_counts(shared, seed: int) -> dict:
    """tests/test_tipim.py's white-box measurement (the SDK on the runtime, the cached mobileface
    K 10 bundle) with diversity seed ``seed``: probes moved / at a target (of 10), and the verdict."""
    import io
    from contextlib import redirect_stdout

    from edgecloak.export.bundle import default_bundle

    tt = _tests_module("test_tipim")
    with redirect_stdout(io.StringIO()):  # the per-probe lines
        moved, at_target = tt.protect_probes_whitebox(shared.recognizer, shared.detector(), shared.celeb_faces(),
                                                      default_bundle(["mobileface"], 10), seed)
    # the test's thresholds
    return {"moved": moved, "rank1_target": at_target, "passed": moved >= 9 and at_target >= 8}


def group_whitebox(shared, workdir, arrays, seeds):
    """tests/test_tipim.py::test_whitebox_protection_on_real_photos: moved / rank-1 at a target (of 10)."""
    out = _whitebox_counts(shared, 0)
    print(f"  whitebox: {out}", flush=True)
    return out


def group_whitebox_seeds(shared, workdir, arrays, seeds):
    """The white-box test with other diversity seeds: how many of 10 probes each trajectory protects
    (what a machine whose rounding sends the loop elsewhere would see)."""
    out = {}
    for seed in seeds:
        out[f"seed{seed}"] = _whitebox_counts(shared, seed)
        print(f"  whitebox-seeds seed{seed}: {out[f'seed{seed}']}", flush=True)
    return out


def group_precision(shared, workdir, arrays, seeds):
    """tests/test_precision.py: fp16 / int8 gradient fidelity figures on mobileface."""
    from edgecloak.calibration.precision import precision_report

    report = precision_report(["mobileface"], num_targets=4, precisions=("fp16", "int8"))
    out = {r["precision"]: {k: r[k] for k in ("passed", "sign_agreement", "embedding_cosine", "grad_cosine")}
           for r in report["variants"]}
    print(f"  precision: {out}", flush=True)
    return out


def group_precision_e2e(shared, workdir, arrays, seeds):
    """tests/test_precision.py: the fp16 conversion of the cached mobileface bundle, gates and e2e figures."""
    import shutil
    import tempfile

    from edgecloak.calibration.precision import convert_bundle
    from edgecloak.export.bundle import default_bundle

    tmp = Path(tempfile.mkdtemp())
    try:
        figures = convert_bundle(default_bundle(["mobileface"], 10), tmp / "fp16", "fp16", e2e_probes=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = figures["mobileface"]
    out = {k: m[k] for k in ("passed", "grad_cosine", "sign_agreement", "embedding_cosine") if k in m}
    out["rank1_t"] = m["protection"]["white_box_rank1_t"]
    out["allowed_drop"] = m["protection"]["allowed_drop"]
    print(f"  precision-e2e: {out}", flush=True)
    return out


class _Mutant:
    """An engine with a planted bug: ``flip`` negates the gradient, ``shift`` moves it one pixel
    (a misaligned warp adjoint), ``scale`` halves it on one colour channel."""

    def __init__(self, engine, kind):
        self._engine, self.kind = engine, kind
        self.id, self.files = engine.id, engine.files

    def embed_and_grad(self, crop, cotangents):
        import numpy as np

        emb, grad = self._engine.embed_and_grad(crop, cotangents)
        if self.kind == "flip":
            grad = -grad
        elif self.kind == "shift":
            grad = np.roll(grad, 1, axis=-1)
        elif self.kind == "scale":
            grad = grad.copy()
            grad[:, :, 0] *= 0.5
        return emb, grad

    def embed(self, crops):
        return self._engine.embed(crops)


def group_mutants(shared, workdir, arrays, seeds):
    """What the parity tests must still catch: the runtime with a planted bug against the oracle.

    Bugs: gradient sign flipped, gradient one pixel off (warp adjoint), one channel's gradient halved,
    momentum dropped (mu 0), input diversity dropped, the MMD term dropped (gamma 0), re-scoring
    every step instead of every 4; each in the runtime only."""
    import dataclasses

    import numpy as np
    import torch

    from edgecloak.export.reference.oracle import TIPIM
    from edgecloak.export.reference.view import FaceView
    from edgecloak.runtime.config import TIPIMConfig
    from edgecloak.runtime.tipim import RuntimeTIPIM

    image, face, protector, targets, region, pixels = _sample_region(shared, shared.mobileface_bundle(workdir), "onnxruntime")
    view = FaceView.around(face.landmarks, image.shape[:2], protector.geometries)
    limit = np.floor(12.0 * region.edge_weight_map())
    out = {}
    chosen = {k: PARITY[k] for k in ("linf-diversity", "l2", "mmd", "rescore", "linf-div-4")}
    for name, settings in chosen.items():
        config = TIPIMConfig(**settings)
        want = TIPIM([shared.recognizer("mobileface")], config).run(torch.from_numpy(pixels), view, targets)
        mutants = {"none": (protector.engines, config), "flip": ([_Mutant(e, "flip") for e in protector.engines], config),
                   "shift": ([_Mutant(e, "shift") for e in protector.engines], config),
                   "scale": ([_Mutant(e, "scale") for e in protector.engines], config),
                   "no-momentum": (protector.engines, dataclasses.replace(config, mu=0.0)),
                   "no-diversity": (protector.engines, dataclasses.replace(config, diversity=None))}
        if config.gamma > 0:
            mutants["no-mmd"] = (protector.engines, dataclasses.replace(config, gamma=0.0))
        if config.rescore_every > 1:
            mutants["rescore-every-step"] = (protector.engines, dataclasses.replace(config, rescore_every=1,
                                                                                    settle_after=None))
        for label, (engines, cfg) in mutants.items():
            if label == "no-diversity" and config.diversity is None:
                continue
            got = RuntimeTIPIM(engines, cfg).run(pixels, region, targets)
            d = np.abs(got.region - want.region.numpy())
            n = min(len(got.gains), len(want.gains))
            row = {"frac_gt1": float((d > 1).mean()), "max_diff": float(d.max()),
                   "gains_max_abs": float(np.abs(np.array(got.gains[:n]) - np.array(want.gains[:n])).max()),
                   "target": [got.target_index, want.target_index],
                   "within_eps": bool((np.abs(got.region - pixels) <= limit + 1e-6).all())}
            out[f"{name}/{label}"] = row
            print(f"  mutants {name}/{label}: {row}", flush=True)
    return out


def group_stop_trace(shared, workdir, arrays, seeds):
    """tests/test_runtime.py early stop: how decided the stop step is. Per step, the runtime's stop
    test value (min over surrogates of cos(target) - cos(original), chosen candidate) vs the 0.1 margin."""

    from edgecloak.runtime.config import TIPIMConfig
    from edgecloak.runtime.tipim import RuntimeTIPIM

    image, face, protector, targets, region, pixels = _sample_region(shared, shared.mobileface_bundle(workdir), "onnxruntime")
    out = {}
    for seed in seeds:
        loop = RuntimeTIPIM(protector.engines, TIPIMConfig(steps=16, stop_margin=-10.0, seed=seed))
        values = []

        def fooled(emb, row, real, bank, margin, _values=values, _loop=loop):
            t = int(_loop.gain({k: v[row:row + 1] for k, v in emb.items()}, real, bank)[0].argmax())
            _values.append(min(float(emb[e.id][row] @ bank.embeddings[e.id][t]) - float(emb[e.id][row] @ real[e.id][0])
                               for e in _loop.engines))
            return False  # never stop: trace every step

        loop.fooled = fooled
        loop.run(pixels, region, targets)
        first = next((i + 1 for i, v in enumerate(values) if v > 0.1), None)
        out[f"seed{seed}"] = {"values": [round(v, 4) for v in values], "stop_step_at_0.1": first}
        print(f"  stop-trace seed{seed}: {out[f'seed{seed}']}", flush=True)
    return out


GROUPS = {
    "parity": group_parity, "mutants": group_mutants, "stop-trace": group_stop_trace, "perturb": group_perturb, "early-stop": group_early_stop, "backend-grad": group_backend_grad,
    "gradgraph": group_gradgraph, "tfjs": group_tfjs, "recognizers": group_recognizers, "cli": group_cli,
    "cli-photos": group_cli_photos, "bench": group_bench, "tipim": group_tipim, "whitebox": group_whitebox, "precision": group_precision, "whitebox-seeds": group_whitebox_seeds, "precision-e2e": group_precision_e2e, "cli-chosen": group_cli_chosen,
}


def worker(variant: str, groups: list[str], out: Path, workdir: Path, seeds: list[int]) -> None:
    import numpy as np

    _apply_switches(VARIANTS[variant][1])
    import torch

    shared = Shared()
    arrays: dict = {}
    result = {"variant": variant, "env": VARIANTS[variant][0], "switches": VARIANTS[variant][1],
              "torch_threads": torch.get_num_threads(), "mkldnn": torch.backends.mkldnn.enabled,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "groups": {}}
    for g in groups:
        t0 = time.perf_counter()
        print(f"[{variant}] {g}", flush=True)
        result["groups"][g] = GROUPS[g](shared, workdir, arrays, seeds)
        result["groups"][g]["_seconds"] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / f"{variant}.json"
    if previous.exists():  # runs of other groups accumulate
        old = json.loads(previous.read_text())
        result["groups"] = {**old["groups"], **result["groups"]}
    previous.write_text(json.dumps(result, indent=1))
    if arrays:
        if (out / f"{variant}.npz").exists():
            with np.load(out / f"{variant}.npz") as old_arrays:
                arrays = {**{k: old_arrays[k] for k in old_arrays.files}, **arrays}
        np.savez_compressed(out / f"{variant}.npz", **arrays)


# -- the driver ----------------------------------------------------------------------------------

def _walk(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}/")
        else:
            yield f"{prefix}{k}", v


def summarise(out: Path, variants: list[str]) -> None:
    """Per scalar figure: its value in every variant, and the worst (max or min) over them."""
    import numpy as np

    results = {v: json.loads((out / f"{v}.json").read_text()) for v in variants if (out / f"{v}.json").exists()}
    if not results:
        return
    table: dict[str, dict[str, object]] = {}
    for v, r in results.items():
        for key, value in _walk(r["groups"]):
            table.setdefault(key, {})[v] = value
    names = list(results)
    print("\nfigure".ljust(60) + "".join(n[:14].rjust(15) for n in names))
    for key, row in table.items():
        cells = []
        for n in names:
            value = row.get(n)
            cells.append((f"{value:.3g}" if isinstance(value, float) else str(value))[:14].rjust(15))
        print(key[:59].ljust(60) + "".join(cells))
    # cross-variant: the same engine's protected region in another variant
    arrays = {v: np.load(out / f"{v}.npz") for v in names if (out / f"{v}.npz").exists()}
    if len(arrays) > 1:
        base = names[0]
        print(f"\ncross-variant region differences vs {base} (fraction of pixels differing by > 1; max)")
        for key in arrays[base].files:
            cells = []
            for n in names[1:]:
                if n in arrays and key in arrays[n].files:
                    d = np.abs(arrays[n][key] - arrays[base][key])
                    cells.append(f"{(d > 1).mean():.3%}/{d.max():.0f}".rjust(15))
            print(key[:59].ljust(60) + "".join(cells))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--groups", default=",".join(GROUPS))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds for the chaotic groups")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "edgecloak-drift")
    parser.add_argument("--workdir", type=Path, default=None, help="where bundles are exported once (default OUT/work)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.list:
        print("variants:", ", ".join(VARIANTS), "\ngroups:", ", ".join(GROUPS))
        return 0
    groups = [g for g in args.groups.split(",") if g]
    seeds = [int(s) for s in args.seeds.split(",")]
    workdir = args.workdir or args.out / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args.worker, groups, args.out, workdir, seeds)
        return 0
    variants = [v for v in args.variants.split(",") if v]
    if not args.summary_only:
        for v in variants:
            env = {**os.environ, **VARIANTS[v][0]}
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--worker", v, "--groups", ",".join(groups), "--seeds",
                                   args.seeds, "--out", str(args.out), "--workdir", str(workdir)], env=env)
            print(f"[{v}] exit {done.returncode} in {time.perf_counter() - t0:.0f} s", flush=True)
    summarise(args.out, variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
