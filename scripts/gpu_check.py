"""One-command check of the GPU backends, for a machine with a GPU (and TensorRT, where it exists).

    python scripts/gpu_check.py [--bundle DIR] [--out gpu-check/]

1. Says what this machine has: TensorRT (or why not), CUDA through torch / cuda-python, ORT providers.
2. Uses the given bundle, or exports a mobileface bundle (with torch programs) when torch is here.
3. For every backend that can run (tensorrt fp32, tensorrt fp16, torch on CUDA, onnxruntime):
   builds/loads the engines (twice: the second load must come from the engine cache), runs the same
   TIP-IM loop as the ONNX Runtime CPU runtime on the sample face and compares the protected
   pixels (fp32 must match within 1/255 with the same target), and times per iteration / per face.
4. Runs the pytest files whose GPU cases skip elsewhere (TensorRT backend, runtime parity).
Writes ``gpu_check.json`` and prints a table. Exit status 1 if an fp32 parity check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgecloak.bench import timed_protect
from edgecloak.runtime.backends import backend_class
from edgecloak.runtime.bundle import Bundle
from edgecloak.runtime.config import TIPIMConfig
from edgecloak.runtime.image_io import load_image
from edgecloak.runtime.protector import RuntimeProtector


def machine() -> dict:
    import onnxruntime as ort

    facts = {"onnxruntime_providers": ort.get_available_providers()}
    for name in ("tensorrt", "torch"):
        ok, why = backend_class(name).available()
        facts[name] = why if ok else f"unavailable: {why}"
    return facts


def protect(protector: RuntimeProtector, image, face) -> tuple[np.ndarray, int, float, float]:
    """(protected region, target index, seconds per face, seconds per iteration) on one face."""
    targets = protector.targets.excluding_lookalikes(protector.embed_face(image, face.landmarks))
    per_face, per_iter, region, target = timed_protect(protector, image, face.landmarks, targets)
    return region, target, per_face, per_iter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--photo", type=Path, default=None, help="default: the shipped sample photo")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine(), "rows": []}
    print(json.dumps(report["machine"], indent=2))

    bundle_path = args.bundle
    if bundle_path is None:
        from edgecloak.export.bundle import export_bundle

        bundle_path = export_bundle(args.out / "bundle", ["mobileface"], TIPIMConfig(), with_torch=True, force=True,
                                   progress=print)
    bundle = Bundle.load(bundle_path)
    if args.photo is not None:
        photo = args.photo
    else:
        from edgecloak.export.zoo.photos import sample_photo

        photo = sample_photo()
    image = load_image(photo)
    baseline = RuntimeProtector.from_bundle(bundle, "onnxruntime", steps=args.steps)
    face = baseline.detector.detect(image)[0]
    want, want_target, cpu_face, cpu_iter = protect(baseline, image, face)
    report["rows"].append({"engine": "onnxruntime (baseline)", "backend": baseline.backend_description,
                           "per_face_s": cpu_face, "per_iteration_ms": cpu_iter * 1e3})

    from edgecloak.runtime.backends.tensorrt import TensorRTBackend

    from edgecloak.runtime.backends.pytorch import TorchBackend

    # (label, backend class, how to make one, fp32 = must match the CPU pixels)
    candidates = [("tensorrt fp32", TensorRTBackend, lambda: TensorRTBackend(precision="fp32"), True),
                  ("tensorrt fp16", TensorRTBackend, lambda: TensorRTBackend(precision="fp16"), False)]
    if bundle.surrogates[0].extra.get("torch"):
        candidates.append(("torch cuda", TorchBackend, lambda: TorchBackend("cuda"), True))
    failed = False
    for label, cls, make, strict in candidates:
        ok, why = cls.available()
        if ok and label == "torch cuda" and "(cuda)" not in why:
            ok, why = False, f"{why}: no CUDA device"
        if not ok:
            report["rows"].append({"engine": label, "skipped": why})
            continue
        loads = []
        for _ in range(2):  # the second load comes from the engine cache
            t0 = time.perf_counter()
            backend = make()
            engines = [backend.load(f) for f in bundle.surrogates]
            loads.append(time.perf_counter() - t0)
        protector = RuntimeProtector(bundle, engines, backend.describe(), TIPIMConfig(steps=args.steps))
        protector.config = TIPIMConfig(steps=2)
        protect(protector, image, face)  # warm-up (engine start, first-call allocations)
        protector.config = TIPIMConfig(steps=args.steps)
        got, target, per_face, per_iter = protect(protector, image, face)
        diff = int(np.abs(got.astype(int) - want.astype(int)).max())
        row = {"engine": label, "backend": backend.describe(), "load_s": loads, "per_face_s": per_face,
               "per_iteration_ms": per_iter * 1e3, "speedup_vs_cpu": cpu_face / per_face,
               "max_diff_vs_cpu": diff, "same_target": target == want_target}
        if strict and (diff > 1 or target != want_target):
            row["FAILED"] = "fp32 parity: more than 1/255 or another target"
            failed = True
        report["rows"].append(row)

    repo = Path(__file__).resolve().parent.parent
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_backend_tensorrt.py",
                            "tests/test_runtime.py", "-k", "tensorrt or torch"], capture_output=True, text=True,
                           cwd=repo)
    report["pytest"] = {"returncode": tests.returncode, "tail": tests.stdout[-3000:]}
    failed |= tests.returncode != 0
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    for r in report["rows"]:
        if "skipped" in r:
            print(f"{r['engine']:<24} skipped: {r['skipped']}")
        else:
            print(f"{r['engine']:<24} {r['per_iteration_ms']:8.1f} ms/iter {r['per_face_s']:7.2f} s/face "
                  f"diff {r.get('max_diff_vs_cpu', 0)} {r.get('FAILED', '')}")
    print(report["pytest"]["tail"][-800:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
