"""Speed of the TIP-IM loop per engine: the paper-style torch reference vs the runtime backends.

For each surrogate ensemble, on one real face (the shipped sample photo unless given), with the
same N, K and seed everywhere, it times:

* ``reference-paper``: torch autograd written as the paper's code does it (one forward and one
  backward per target, K per step): the baseline every ratio is taken against;
* ``reference-batched``: the torch reference with the K gradients in one backward;
* ``runtime/<backend>``: the torch-free loop on the bundle's graphs, for every available backend
  (ONNX Runtime always; torch and TensorRT when present).

Per iteration is the median time between steps; per face is the whole ``protect_face`` call
(setup + N steps + final scoring). ``max_diff_vs_reference`` is the largest pixel difference of
the protected region from the batched reference's (0 = identical), ``differing_pixels_vs_reference``
the share of its pixels that differ by more than 1. Results are JSON plus a table.

Example:
    >>> report = run_bench([["mobileface"]], steps=5)     # doctest: +SKIP
    >>> print(format_table(report))                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import edgecloak


def timed_protect(protector, image, landmarks, targets) -> tuple[float, float, np.ndarray, int]:
    """(seconds per face, median seconds per iteration, protected region, target index).

    Torch-free (any protector), so device scripts can use it too.
    """
    stamps: list[float] = []
    t0 = time.perf_counter()
    _, region, target = protector.protect_face(image, image, landmarks, targets, on_step=lambda _i: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    gaps = np.diff([t0, *stamps])
    per_iter = float(statistics.median(gaps[1:])) if len(gaps) > 1 else float(gaps[0])
    return total, per_iter, region, target


def run_bench(
    ensembles: Sequence[Sequence[str]],
    steps: int = 50,
    num_targets: int = 10,
    backends: Sequence[str] = ("onnxruntime", "torch", "tensorrt"),
    photo: str | os.PathLike[str] | None = None,
    include_reference: bool = True,
    edge_preset: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time every engine on every ensemble; returns the JSON-ready report (rows + machine facts)."""
    import onnxruntime as ort
    import torch

    from edgecloak.calibration.presets import preset as get_preset
    from edgecloak.export.bundle import default_bundle
    from edgecloak.export.recognizers import Recognizer
    from edgecloak.export.reference.protector import ReferenceProtector
    from edgecloak.export.zoo.photos import sample_photo
    from edgecloak.runtime.backends import backend_class
    from edgecloak.runtime.bundle import Bundle
    from edgecloak.runtime.config import TIPIMConfig
    from edgecloak.runtime.image_io import load_image
    from edgecloak.runtime.protector import RuntimeProtector

    say = progress or (lambda _m: None)
    image = load_image(photo or sample_photo())
    config = TIPIMConfig(steps=steps, seed=0)
    rows: list[dict[str, Any]] = []
    for ids in ensembles:
        ids = list(ids)
        name = "+".join(ids)
        say(f"{name}: bundle")
        bundle = Bundle.load(default_bundle(ids, num_targets, with_torch="torch" in backends))
        runtime_cpu = RuntimeProtector.from_bundle(bundle, "onnxruntime", steps=steps, seed=0)
        t0 = time.perf_counter()
        faces = runtime_cpu.detector.detect(image)
        detect_s = time.perf_counter() - t0
        face = faces[0]
        targets = bundle.targets.excluding_lookalikes(runtime_cpu.embed_face(image, face.landmarks))
        engines: list[tuple[str, Any]] = []
        if include_reference:
            recognizers = [Recognizer.load(i) for i in ids]
            torch_targets = type(targets)(targets.identities, {k: torch.from_numpy(v) for k, v in targets.embeddings.items()})
            for label, paper in (("reference-paper", True), ("reference-batched", False)):
                engines.append((label, (ReferenceProtector(recognizers, runtime_cpu.detector, torch_targets, config, paper), torch_targets)))
        for backend in backends:
            ok, why = backend_class(backend).available()
            if not ok:
                rows.append({"ensemble": name, "engine": f"runtime/{backend}", "skipped": why})
                continue
            protector = runtime_cpu if backend == "onnxruntime" else RuntimeProtector.from_bundle(bundle, backend, steps=steps, seed=0)
            engines.append((f"runtime/{backend}", (protector, targets)))
        reference_region = None
        for label, (protector, bank) in engines:
            say(f"{name}: {label}")
            per_face, per_iter, region, target = timed_protect(protector, image, face.landmarks, bank)
            if label == "reference-batched":
                reference_region = region
            rows.append({
                "ensemble": name, "engine": label, "backend": protector.backend_description,
                "steps": steps, "num_targets": bank.size, "per_iteration_ms": round(per_iter * 1e3, 2),
                "per_face_s": round(per_face, 3), "detect_s": round(detect_s, 3),
                "target": bank.identities[target], "region": region,
            })
        paper = next((r for r in rows if r["ensemble"] == name and r["engine"] == "reference-paper"), None)
        for r in rows:
            if r["ensemble"] != name or "region" not in r:
                continue
            region = r.pop("region")
            if paper is not None:
                r["speedup_vs_paper"] = round(paper["per_face_s"] / r["per_face_s"], 2)
            if reference_region is not None:
                diff = np.abs(region.astype(np.int16) - reference_region.astype(np.int16))
                r["max_diff_vs_reference"] = int(diff.max())
                # the share that matters: sign steps are chaotic, so one pixel may differ by a few
                # levels on another CPU, while a wrong gradient moves most of the region
                r["differing_pixels_vs_reference"] = round(float((diff > 1).mean()), 6)
    if edge_preset:
        edge = get_preset("edge")
        say("edge preset")
        bundle = Bundle.load(default_bundle(list(edge.surrogates), edge.num_targets))
        protector = RuntimeProtector.from_bundle(bundle, "auto", **edge.settings)
        t0 = time.perf_counter()
        faces = protector.detector.detect(image)
        targets = bundle.targets.excluding_lookalikes(protector.embed_face(image, faces[0].landmarks))
        _, _, target = protector.protect_face(image, image, faces[0].landmarks, targets)
        rows.append({
            "ensemble": "+".join(edge.surrogates), "engine": "edge preset (detect + protect)",
            "backend": protector.backend_description, "steps": protector.config.steps, "num_targets": targets.size,
            "per_face_s": round(time.perf_counter() - t0, 3), "target": targets.identities[target],
        })
    return {
        "edgecloak": edgecloak.__version__,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "onnxruntime": ort.__version__,
                    "torch": torch.__version__},
        "photo": str(Path(photo) if photo else "sample (Grace Hopper)"),
        "image_hw": list(image.shape[:2]),
        "rows": rows,
    }


def format_table(report: dict[str, Any]) -> str:
    """The report's rows as an aligned text table (what ``edgecloak bench`` prints)."""
    head = ("ensemble", "engine", "N", "K", "ms/iter", "s/face", "x paper", "diff", "backend")
    lines = [head]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append((r["ensemble"], r["engine"], "", "", "", "", "", "", f"skipped: {r['skipped']}"))
            continue
        lines.append((
            r["ensemble"], r["engine"], str(r["steps"]), str(r["num_targets"]),
            f"{r['per_iteration_ms']:.1f}" if "per_iteration_ms" in r else "",
            f"{r['per_face_s']:.2f}",
            f"{r['speedup_vs_paper']:.1f}x" if "speedup_vs_paper" in r else "",
            str(r.get("max_diff_vs_reference", "")), r.get("backend", ""),
        ))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in lines)
