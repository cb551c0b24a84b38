"""Speed of the TIP-IM loop per engine: the paper-style torch loop vs the runtime backends.

For each surrogate ensemble, on one real face (the shipped sample photo unless given), with the
same N, K and seed everywhere, it times:

* ``reference-paper``: the torch oracle (``edgecloak.export.reference.oracle``) written as the
  paper's code does it (one forward and one backward per target, K per step): the baseline every
  ratio is taken against;
* ``reference-batched``: the torch oracle with the K gradients in one backward;
* ``runtime/<backend>``: the product loop on the bundle's graphs, for every available backend
  (ONNX Runtime always; torch and TensorRT when present);
* ``preset <name>: ...`` (``preset_rows``): a shipped preset on a whole one-face photo (detection,
  loop, self-check) with and without each change to the loop (``LOOP_CHANGES``: the single-target
  graphs, a start from the user's cloak profile), as ratios against today's loop (``x today``).

Per iteration is the median time between steps; per face is the whole face's loop (setup + N steps
+ final scoring). ``max_diff_vs_reference`` is the largest pixel difference of the protected
region from the batched oracle's (0 = identical), ``differing_pixels_vs_reference`` the share of
its pixels that differ by more than 1. Results are JSON plus a table.

Example:
    >>> report = run_bench([["mobileface"]], steps=5)     # doctest: +SKIP
    >>> print(format_table(report))                       # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnxruntime as ort

import edgecloak
from edgecloak.cloaker import Cloaker
from edgecloak.policy import SafetyPolicy
from edgecloak.recipe import bundle_for, resolve
from edgecloak.runtime.backends import backend_class
from edgecloak.runtime.bundle import Bundle
from edgecloak.runtime.config import TIPIMConfig
from edgecloak.runtime.image_io import load_image
from edgecloak.runtime.protector import FaceResult, RuntimeProtector


# one face's loop: called with an on_step callback, returns the face's ``FaceResult``, as
# ``RuntimeProtector.protect_face`` and the torch oracle's ``protect_face`` do
FaceLoop = Callable[[Callable[[int], None]], FaceResult]


def timed_loop(loop: FaceLoop) -> tuple[float, float, np.ndarray, int]:
    """(seconds per face, median seconds per iteration, protected region, target index) of one face's loop.

    Example:
        >>> done = FaceResult((0, 0, 1, 1), np.zeros((1, 1, 3), np.uint8), target_index=2, steps=2)
        >>> timed_loop(lambda on_step: (on_step(1), on_step(2), done)[-1])[3]
        2
    """
    stamps: list[float] = []
    t0 = time.perf_counter()
    result = loop(lambda _i: stamps.append(time.perf_counter()))
    total = time.perf_counter() - t0
    gaps = np.diff([t0, *stamps])
    per_iter = float(statistics.median(gaps[1:])) if len(gaps) > 1 else float(gaps[0])
    return total, per_iter, result.region, result.target_index


def timed_protect(protector, image, landmarks, targets) -> tuple[float, float, np.ndarray, int]:
    """``timed_loop`` of a protector's ``protect_face`` on one face of ``image``.

    Torch-free (any ``RuntimeProtector``), so device scripts can use it too.
    """
    return timed_loop(lambda on_step: protector.protect_face(image, image, landmarks, targets, on_step=on_step))


# What the product's own loop has gained, preset by preset, against "today's loop": the loop as it
# was before each change, run in the same process on the same photo. Each entry: (row label, the
# ``RuntimeProtector.from_bundle`` options, the cloak profile's refinement steps or None).
LOOP_CHANGES: tuple[tuple[str, dict[str, Any], int | None], ...] = (
    ("today's loop (K-target graph every step)", {"held_graphs": False}, None),
    ("single-target graph on held-target steps", {"held_graphs": True}, None),
    ("+ started from the user's cloak profile, 0 steps", {"held_graphs": True}, 0),
    ("+ started from the user's cloak profile, 2 steps", {"held_graphs": True}, 2),
)


def preset_rows(presets: Sequence[str], backend: str = "onnxruntime", repeats: int = 3,
                progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per preset and ``LOOP_CHANGES`` entry: seconds per photo of ``Cloaker.protect`` (detection,
    the preset's loop, the self-check; no retries) on a real one-face photo, the mean of ``repeats``
    runs after a warm-up, with its ratio to today's loop (``speedup_vs_today``) and whether the
    self-check passed.

    The profile rows enrol the photo set's first person on three of their photos with the preset's
    own loop; every row then times the first OTHER photo of theirs that the profile recognises.

    Example:
        >>> rows = preset_rows(["balanced"])                                  # doctest: +SKIP
        >>> [(r["engine"], r["speedup_vs_today"]) for r in rows]              # doctest: +SKIP
        [("preset balanced: today's loop (K-target graph every step)", 1.0), (..., 1.6), ...]
    """
    from edgecloak.export.zoo.photos import identity_photos  # optional: the photo set ships with the export extra

    say = progress or (lambda _m: None)
    photos = identity_photos()
    user = sorted(photos)[0]
    first, *rest = sorted(photos[user])
    enrolment = [load_image(p) for p in (first, *rest[:2])]
    rows: list[dict[str, Any]] = []
    for name in presets:
        recipe = resolve(name)
        bundle = bundle_for(recipe)
        policy = SafetyPolicy(retries=0, on_fail="keep")  # the recipe's cost, not the luck of its retries
        say(f"preset {name}: enrolling {user} on {len(enrolment)} photos")
        enroller = Cloaker(RuntimeProtector.from_bundle(bundle, backend, recipe.config), policy=policy, recipe=recipe)
        profile = enroller.enroll(enrolment, "bench", save=False)
        # the timed photo: the first other photo of the user that the profile recognises as theirs
        timed = next((p for p in rest[2:] if profile.is_owner(enroller.protector.embed_face(
            image := load_image(p), enroller.detector.largest_face(image, str(p)).landmarks))), rest[2])
        image = load_image(timed)
        enroller.protector.close()
        today = None
        for label, options, profile_steps in LOOP_CHANGES:
            protector = RuntimeProtector.from_bundle(bundle, backend, recipe.config, **options)
            cloaker = Cloaker(protector, policy=policy, recipe=recipe)
            if profile_steps is not None:
                cloaker.use_profile(profile, profile_steps)
            say(f"preset {name}: {label}")
            cloaker.protect(image)  # warm-up: first-call costs
            seconds = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                result = cloaker.protect(image)
                seconds.append(time.perf_counter() - t0)
            protector.close()
            face = max(result.faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            per_photo = statistics.fmean(seconds)
            today = today or per_photo
            rows.append({"ensemble": "+".join(recipe.surrogates), "engine": f"preset {name}: {label}",
                         "backend": protector.backend_description, "steps": face.steps,
                         "num_targets": bundle.num_targets, "per_face_s": round(per_photo, 3),
                         "speedup_vs_today": round(today / per_photo, 2), "target": face.target,
                         "self_check_passed": face.action == "cloaked", "profile_started": face.profile_started,
                         "photo": f"{user}/{timed.name}"})
    return rows


def run_bench(
    ensembles: Sequence[Sequence[str]],
    steps: int = 50,
    num_targets: int = 10,
    backends: Sequence[str] = ("onnxruntime", "torch", "tensorrt"),
    photo: str | os.PathLike[str] | None = None,
    include_reference: bool = True,
    edge_preset: bool = True,
    progress: Callable[[str], None] | None = None,
    presets: Sequence[str] = (),
) -> dict[str, Any]:
    """Time every engine on every ensemble, and each of ``presets`` with and without each
    ``LOOP_CHANGES`` entry (``preset_rows``); returns the JSON-ready report (rows + machine facts)."""
    # optional: the export extra (torch, bundle export, the oracle); device scripts import timed_protect
    import torch

    from edgecloak.export.bundle import default_bundle
    from edgecloak.export.recognizers import Recognizer
    from edgecloak.export.reference import oracle
    from edgecloak.export.zoo.photos import sample_photo

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
        engines: list[tuple[str, str, FaceLoop]] = []  # (label, what runs it, one face's loop)
        if include_reference:
            # the oracle on the zoo's torch recognizers, over the same face, targets and settings
            recognizers = [Recognizer.load(i) for i in ids]
            described = f"torch {torch.__version__} oracle (autograd, cpu)"
            for label, paper in (("reference-paper", True), ("reference-batched", False)):
                attack = oracle.TIPIM(recognizers, config, per_target_passes=paper)
                engines.append((label, described, functools.partial(oracle.protect_face, attack, image, face.landmarks,
                                                                    targets)))
        for backend in backends:
            ok, why = backend_class(backend).available()
            if not ok:
                rows.append({"ensemble": name, "engine": f"runtime/{backend}", "skipped": why})
                continue
            protector = runtime_cpu if backend == "onnxruntime" else RuntimeProtector.from_bundle(bundle, backend, steps=steps, seed=0)
            engines.append((f"runtime/{backend}", protector.backend_description,
                            functools.partial(protector.protect_face, image, image, face.landmarks, targets)))
        reference_region = None
        for label, described, loop in engines:
            say(f"{name}: {label}")
            per_face, per_iter, region, target = timed_loop(loop)
            if label == "reference-batched":
                reference_region = region
            rows.append({
                "ensemble": name, "engine": label, "backend": described,
                "steps": steps, "num_targets": targets.size, "per_iteration_ms": round(per_iter * 1e3, 2),
                "per_face_s": round(per_face, 3), "detect_s": round(detect_s, 3),
                "target": targets.identities[target], "region": region,
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
        edge = resolve("edge")
        say("edge preset")
        bundle = bundle_for(edge)  # the preset's own cached bundle, as `protect --preset edge` runs it
        protector = RuntimeProtector.from_bundle(bundle, "auto", edge.config)
        t0 = time.perf_counter()
        faces = protector.detector.detect(image)
        targets = bundle.targets.excluding_lookalikes(protector.embed_face(image, faces[0].landmarks))
        target = protector.protect_face(image, image, faces[0].landmarks, targets).target_index
        rows.append({
            "ensemble": "+".join(edge.surrogates), "engine": "edge preset (detect + protect)",
            "backend": protector.backend_description, "steps": protector.config.steps, "num_targets": targets.size,
            "per_face_s": round(time.perf_counter() - t0, 3), "target": targets.identities[target],
        })
    rows += preset_rows(presets, progress=say)
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
    head = ("ensemble", "engine", "N", "K", "ms/iter", "s/face", "x paper", "x today", "diff", "backend")
    lines = [head]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append((r["ensemble"], r["engine"], "", "", "", "", "", "", "", f"skipped: {r['skipped']}"))
            continue
        lines.append((
            r["ensemble"], r["engine"], str(r["steps"]), str(r["num_targets"]),
            f"{r['per_iteration_ms']:.1f}" if "per_iteration_ms" in r else "",
            f"{r['per_face_s']:.2f}",
            f"{r['speedup_vs_paper']:.1f}x" if "speedup_vs_paper" in r else "",
            f"{r['speedup_vs_today']:.2f}x" if "speedup_vs_today" in r else "",
            str(r.get("max_diff_vs_reference", "")), r.get("backend", ""),
        ))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in lines)
