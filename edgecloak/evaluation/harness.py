"""The evaluation run: protect the probe photos with every method, upload-transform them, and score
them with white-box and black-box recognizers against a gallery (the paper's protocol, adapted).

Protocol (see ``protocol.py`` for the split, ``evaluation_photos`` for the photos): 10 users, the 5
celebrities and dlib's 5 "johns", whose tight 150x150 face chips are loaded padded (25% replicated
border, 226x226: ``load_face_photo``, the same pixels for probe, gallery and target photos). Each
user gives ``probes_per_identity`` probe photos (4 by default: 40 probes) and
``targets_per_identity`` optimisation photos (3), which are in no gallery. Each probe photo of user
A is protected towards A's target identities (the other users, embedded from their optimisation
photos) and searched in a gallery of A's other photos, every other user's gallery photos, the 10
faces of the one-photo identities and, unless ``distractors`` is off (``--no-distractors``), 612
faces of gallery-only identities, never probed nor targets: 3 photos of Barack Obama (too few to
split) and 609 one-photo portraits. Per method,
transform and recognizer: Rank-1/5-UT, Rank-1/5-T, verification dodging at the recognizer's own
threshold at ``far`` on clean impostor pairs, the protection success rates at the stricter
``far_strict`` (``psr_dodge_far1e-3``, ``psr_target_far1e-3``: see ``metrics``), and the
re-detection rate; per method: PSNR and SSIM of the face crop and the whole photo, and seconds per
photo. The white-box and black-box means over recognizers also come as rates with a 95% interval
(``white_box_rank1_ut_rate`` ...: value, n, low, high), bootstrapped over probes.

Cross-family transfer (``EvalSettings.cross_family``, leave one family out): for each recognizer
family F (``protocol.FAMILIES``) a preset is re-run on its surrogates outside F
(``cross_family_methods``) and scored on F's members only (``held_out_*`` in its summary); the
results' ``cross_family`` section has, per preset, the matrix family x metric and its mean over
families (``cross_family_table``). These methods are scored on the clean upload only.

Resumable: protected photos are kept under ``out/protected/<method>-<settings hash>/`` and every
detection and embedding in the cache, so a re-run only computes what is missing.

Example:
    >>> results = run_evaluation(EvalSettings(out=Path("eval-out"), probes_per_identity=1))  # doctest: +SKIP
    >>> results["summary"][0]["method"]                                                     # doctest: +SKIP
    'none'
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import subprocess
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from edgecloak.batch.executors import fan_out
from edgecloak.errors import EdgecloakError, UsageError
from edgecloak.export.reference.targets import one_photo_faces
from edgecloak.export.zoo.photos import (distractor_photos, identity_photos, load_face_photo, more_identity_photos,
                                        one_photo_identities)
from edgecloak.presets import CHOSEN
from edgecloak.recipe import resolve
from edgecloak.runtime.atomic import write_json_atomic
from edgecloak.runtime.backends import BACKENDS
from edgecloak.runtime.budget_map import face_support
from edgecloak.runtime.face_region import FaceRegion
from edgecloak.runtime.image_io import load_image, save_image_atomic
from edgecloak.runtime.paths import edgecloak_home

from .evaluators import Evaluators
from .methods import BlurBaseline, CloakerMethod, NoiseBaseline, NoProtection, ProfileMethod, ProtectionMethod
from .metrics import (Rate, accepted, bootstrap_interval, change_outside, far_resolved, impostor_scores, linkability, psnr,
                      psr_keys, rank_metrics, similarity_to, ssim,
                      threshold_at_far)
from .protocol import DEFAULT_EVALUATORS, FAMILIES, MAIN_METHODS, enrolment_photos, families_left_out, split_photos
from .transforms import UPLOAD_TRANSFORMS, apply_transform

# TIP-IM with the paper's published loop settings: one surrogate, N 50, alpha 1.5, eps 12, no input
# diversity, the last iterate (not the best one seen); run on the runtime like every other method
PUBLISHED_TIPIM = {"steps": 50, "alpha": 1.5, "eps": 12.0, "diversity": None, "keep_best": False}
SWEEP_STEPS = (4, 8, 32)  # with the edge preset's 16
SWEEP_EPS = (4.0, 8.0, 16.0)  # with the default 12
CROSS_FAMILY = "cross-family"  # the ``family`` of the leave-one-family-out methods


@dataclass
class EvalSettings:
    """Everything a run depends on (recorded in results.json)."""

    out: Path
    probes_per_identity: int = 4
    targets_per_identity: int = 3
    identities: Sequence[str] | None = None  # users whose photos are probed (default: all)
    # the gallery-only identities (``evaluation_photos``): 3 photos of one more person and 609
    # one-photo portraits; off: a smaller, faster gallery (users and the 10 one-photo faces only)
    distractors: bool = True
    methods: Sequence[str] = MAIN_METHODS
    evaluators: Sequence[str] = DEFAULT_EVALUATORS
    transforms: Sequence[str] = tuple(UPLOAD_TRANSFORMS)
    sweeps: bool = True
    seed: int = 0
    backend: str = "auto"
    far: float = 0.01
    far_strict: float = 1e-3  # the protection success rates' threshold (DiffAM / CLIP2Protect report 1e-3)
    cache_dir: Path | None = None
    bundles: dict[str, Path] = field(default_factory=dict)  # name -> exported bundle, evaluated as methods
    # fan-out: protect the methods' photos in this many workers (local processes, or Ray tasks);
    # metrics are unchanged, but seconds/photo are then measured on shared cores
    workers: int = 1
    ray: bool = False
    ray_address: str | None = None
    # presets judged by leave-one-family-out (``cross_family_methods``), scored on clean uploads
    cross_family: Sequence[str] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bundles"] = {k: str(v) for k, v in self.bundles.items()}
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def preset_method(name: str, backend: str = "auto", seed: int = 0, label: str | None = None,
                  **kwargs: Any) -> CloakerMethod:
    """A preset as a compared method: its surrogates and settings (``edgecloak.recipe.resolve``), the
    evaluation's seed, on the runtime ``backend``; ``kwargs`` are ``CloakerMethod`` fields, and a
    ``settings`` dict among them overrides the preset's.

    Example:
        >>> preset_method("edge", settings={"steps": 4}).config["steps"]
        4
    """
    recipe = resolve(name, settings={**kwargs.pop("settings", {}), "seed": seed})
    return CloakerMethod(label or name, recipe.surrogates, recipe.settings, backend, **kwargs)


# a judged recipe's settings that make it a profile method (``ProfileMethod`` fields), not loop settings
PROFILE_KEYS = ("profile_steps", "passes", "enrol_steps", "masks")


def profile_method(name: str, surrogates: Sequence[str], config: dict[str, Any], backend: str,
                   profile: dict[str, Any], **kwargs: Any) -> ProtectionMethod:
    """A TIP-IM recipe started from per-user cloak profiles (``profile``: ``PROFILE_KEYS`` values);
    with no ``profile`` settings, the recipe itself (``CloakerMethod``)."""
    if not profile:
        return CloakerMethod(name, tuple(surrogates), config, backend, **kwargs)
    return ProfileMethod(name, tuple(surrogates), config, backend, **kwargs, **profile)


def method_catalogue(backend: str = "auto", seed: int = 0) -> dict[str, ProtectionMethod]:
    """The compared methods by name (see ``methods.py``): baselines, TIP-IM as published and the
    presets, every TIP-IM one on the runtime ``backend``."""
    return {
        "none": NoProtection(),
        "noise": NoiseBaseline(eps=12.0),
        "blur": BlurBaseline(sigma=3.0),
        "mifgsm": preset_method("paper", backend, seed, label="mifgsm", untargeted=True, family="baseline"),
        "tipim-published": CloakerMethod("tipim-published", ("mobileface",), {**PUBLISHED_TIPIM, "seed": seed}, backend),
        "edge": preset_method("edge", backend, seed),
        "paper": preset_method("paper", backend, seed),
        # the measured presets (calibration/presets.json), as configured (no self-check retries)
        **{name: preset_method(name, backend, seed) for name in CHOSEN},
        # the default started from each user's cloak profile (enrolled on their optimisation photos)
        **{label: profile_method(label, recipe.surrogates, recipe.settings, backend, {"profile_steps": steps})
           for label, recipe, steps in ((f"balanced-profile-n{n}", resolve("balanced", settings={"seed": seed}), n)
                                        for n in (0, 2))},
    }


def bundle_method(name: str, path: Path, backend: str = "auto", seed: int = 0) -> ProtectionMethod:
    """An exported bundle as a method: its surrogates, its preset, on the runtime ``backend``."""
    recipe = resolve(bundle=path)
    return CloakerMethod(name, recipe.surrogates, {"seed": seed}, backend, bundle=Path(path))


def sweep_methods(backend: str = "auto", seed: int = 0) -> list[ProtectionMethod]:
    """The edge preset at other iteration counts and budgets (protection vs cost and vs eps)."""
    return [*(preset_method("edge", backend, seed, label=f"edge-steps{steps}", settings={"steps": steps},
                            family="sweep", sweep=("steps", steps)) for steps in SWEEP_STEPS),
            *(preset_method("edge", backend, seed, label=f"edge-eps{eps:g}", settings={"eps": eps},
                            family="sweep", sweep=("eps", eps)) for eps in SWEEP_EPS)]


def judged_recipe(spec: str) -> tuple[str, dict[str, Any]]:
    """The preset and settings of a recipe to judge: ``PRESET`` or ``PRESET+KEY=VALUE+KEY=VALUE...``
    (``TIPIMConfig`` fields; a value is read as an int, a float, ``none`` or else a string; and
    ``surrogates=A/B/C``, the preset on other surrogates). The settings are checked when the recipe
    is resolved.

    Example:
        >>> judged_recipe("balanced+ti_sigma=1.5+surrogate_weighting=normalised")
        ('balanced', {'ti_sigma': 1.5, 'surrogate_weighting': 'normalised'})
        >>> judged_recipe("edge+surrogates=mobileface/faceres")
        ('edge', {'surrogates': ('mobileface', 'faceres')})
        >>> judged_recipe("balanced+steps")
        Traceback (most recent call last):
        ...
        edgecloak.errors.UsageError: 'balanced+steps': write each setting as KEY=VALUE after a '+'
    """
    preset, *items = spec.split("+")
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or not text:
            raise UsageError(f"{spec!r}: write each setting as KEY=VALUE after a '+'")
        value: Any = None if text.lower() == "none" else text
        if key == "surrogates":
            settings[key] = tuple(text.split("/"))
            continue
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        settings[key] = value
    return preset, settings


def cross_family_methods(spec: str, backend: str = "auto", seed: int = 0, evaluators: Sequence[str] | None = None,
                         log: Callable[[str], None] | None = None) -> list[ProtectionMethod]:
    """Leave-one-family-out for a recipe (``spec``: a preset, maybe with settings, ``judged_recipe``):
    per recognizer family F (``protocol.FAMILIES``), the recipe on its surrogates outside F, named
    ``<spec>-without-<F>`` and marked ``held_out_family=F``.

    A family is skipped (a ``note:`` through ``log``) when none of the preset's surrogates remain
    without it, or, given the run's ``evaluators``, when none of F's members is among them (nothing
    would score it). An unknown preset or setting is a ``UsageError``.

    Example:
        >>> [(m.name, m.surrogates) for m in cross_family_methods("paper")]
        [('paper-without-mobileface', ('faceres',)), ('paper-without-faceres', ('mobileface',)), ('paper-without-facenet', ('mobileface', 'faceres'))]
        >>> cross_family_methods("paper+ti_sigma=1")[0].config["ti_sigma"]
        1
    """
    preset, overrides = judged_recipe(spec)
    profile = {k: overrides.pop(k) for k in PROFILE_KEYS if k in overrides}
    chosen = overrides.pop("surrogates", None)
    surrogates = resolve(preset, surrogates=chosen, settings=overrides).surrogates
    methods: list[ProtectionMethod] = []
    for family, remaining in families_left_out(surrogates, evaluators).items():
        name = f"{spec}-without-{family}"
        if isinstance(remaining, str):  # why the family cannot be judged
            if log is not None:
                log(f"note: {name} skipped: {remaining}")
            continue
        recipe = resolve(preset, surrogates=remaining, settings={**overrides, "seed": seed})
        methods.append(profile_method(name, recipe.surrogates, recipe.settings, backend, profile, family=CROSS_FAMILY,
                                      held_out_family=family))
    return methods


def held_out_values(per_probe: Sequence[dict], method: str, evaluators: Sequence[str], key: str,
                    transform: str = "none") -> dict[tuple[str, str], float]:
    """Per probe ``(identity, photo)``: the mean of outcome ``key`` over ``evaluators`` for ``method``
    (in the order the probes were scored)."""
    cells: dict[tuple[str, str], list[float]] = {}
    for p in per_probe:
        if p["method"] == method and p["transform"] == transform and p["evaluator"] in evaluators and key in p:
            cells.setdefault((p["identity"], p["photo"]), []).append(p[key])
    return {probe: float(np.mean(v)) for probe, v in cells.items()}


def cross_family_table(per_probe: Sequence[dict], held_out: dict[str, tuple[str, Sequence[str]]],
                       keys: Sequence[str], transform: str = "none") -> dict[str, Any]:
    """The leave-one-family-out matrix and its mean over families, from per-probe outcomes.

    ``held_out``: family -> (the method that left it out, the family's evaluators it is scored on).
    ``matrix[family][key]``: a ``Rate`` dict over probes, each probe's value the mean of ``key`` over
    the family's evaluators. ``mean[key]``: a probe's cross-family value is its mean over the
    families it was scored in, and the Rate is over those (bootstrapped over probes). None where
    nothing was scored.

    Example:
        >>> rows = [{"method": "m-without-a", "identity": "u", "photo": p, "transform": "none",
        ...          "evaluator": "a1", "rank1_ut": v} for p, v in (("1.jpg", 1.0), ("2.jpg", 0.0))]
        >>> t = cross_family_table(rows, {"a": ("m-without-a", ["a1"])}, ["rank1_ut"])
        >>> t["matrix"]["a"]["rank1_ut"]["value"], t["mean"]["rank1_ut"]["n"]
        (0.5, 2)
    """
    matrix: dict[str, dict[str, Any]] = {}
    for family, (method, evaluators) in held_out.items():
        matrix[family] = {}
        for k in keys:
            values = held_out_values(per_probe, method, evaluators, k, transform)
            matrix[family][k] = Rate.of(np.array(list(values.values()))).to_dict() if values else None
    mean = {}
    for k in keys:
        values = cross_family_values(per_probe, held_out, k, transform)
        mean[k] = Rate.of(np.array(list(values.values()))).to_dict() if values else None
    return {"matrix": matrix, "mean": mean}


def cross_family_values(per_probe: Sequence[dict], held_out: dict[str, tuple[str, Sequence[str]]], key: str,
                        transform: str = "none") -> dict[tuple[str, str], float]:
    """Per probe: its cross-family value of ``key``, the mean over the families it was scored in
    (each family's value the mean over its evaluators; ``held_out`` as in ``cross_family_table``)."""
    by_probe: dict[tuple[str, str], list[float]] = {}
    for method, evaluators in held_out.values():
        for probe, v in held_out_values(per_probe, method, evaluators, key, transform).items():
            by_probe.setdefault(probe, []).append(v)
    return {probe: float(np.mean(v)) for probe, v in by_probe.items()}


def paired_difference(before: dict[Any, float], after: dict[Any, float]) -> dict[str, Any] | None:
    """``after - before`` over the probes both scored: the mean difference, n and its 95% percentile
    bootstrap interval over probes (paired: each probe is its own control, so the interval is much
    narrower than the two rates' own intervals). None when no probe is shared.

    Example:
        >>> d = paired_difference({"a": 0.0, "b": 1.0, "c": 0.0}, {"a": 1.0, "b": 1.0, "c": 1.0})
        >>> round(d["value"], 2), d["n"], d["low"] <= d["value"] <= d["high"]
        (0.67, 3, True)
    """
    shared = [p for p in before if p in after]
    if not shared:
        return None
    delta = np.array([after[p] - before[p] for p in shared])
    low, high = bootstrap_interval(delta)
    return {"value": float(delta.mean()), "n": len(shared), "low": low, "high": high}


@dataclass
class Probe:
    identity: str
    path: Path
    image: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray
    seed: int


@dataclass
class Gallery:
    """Clean gallery embeddings per evaluator; ``paths[i]`` is None for distractor faces."""

    labels: np.ndarray
    paths: list[Path | None]
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="photo", disable=not enabled, leave=False)


def _versions() -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                           "cpus": os.cpu_count()}
    for pkg in ("edgecloak", "numpy", "onnxruntime", "torch", "opencv-python-headless"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    try:
        root = Path(__file__).resolve().parents[2]
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                           timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def evaluation_photos(distractors: bool = True) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """The protocol's photos: (users, gallery-only identities), {identity: photos} each.

    Users (probed, and each other's targets): the 5 celebrities (19-27 photos each) and the 5 dlib
    "johns" (10-11 face chips each, loaded padded: ``load_face_photo``). Gallery-only, with
    ``distractors``: Barack Obama (3 photos, too few to split into probes, targets and gallery) and
    609 portraits of one person each (``portrait-000`` ...). Besides these, every gallery holds the
    10 faces of the one-photo identities.

    Example:
        >>> users, others = evaluation_photos()                                  # doctest: +SKIP
        >>> len(users), sum(len(v) for v in others.values())                     # doctest: +SKIP
        (10, 612)
    """
    more = more_identity_photos()
    users = {**identity_photos(), **{n: ps for n, ps in more.items() if n.startswith("john_")}}
    others: dict[str, list[Path]] = {}
    if distractors:
        others = {n: ps for n, ps in more.items() if n not in users}
        others.update({f"portrait-{i:03d}": [p] for i, p in enumerate(distractor_photos())})
    return dict(sorted(users.items())), others


def _build_gallery(split, others: dict[str, list[Path]], evaluators, progress: bool) -> Gallery:
    held_out = {p for paths in split.optimisation.values() for p in paths}
    labels, paths, rows = [], [], {i: [] for i in evaluators.ids}
    items = [(n, p) for n, ps in sorted(split.photos.items()) for p in ps if p not in held_out]
    items += [(n, p) for n, ps in others.items() for p in ps]
    bar = _progress(len(items), "gallery", progress)
    for name, path in items:
        emb, _ = evaluators.embed(load_face_photo(path))
        bar.update()
        if emb is None:
            continue  # no face: not part of the gallery (none of the shipped photos; see photos.py)
        labels.append(name)
        paths.append(path)
        for i in evaluators.ids:
            rows[i].append(emb[i])
    bar.close()
    for name, image, landmarks in one_photo_faces(evaluators.detector, one_photo_identities()):
        emb = evaluators.embed_face(image, landmarks)
        labels.append(name)
        paths.append(None)
        for i in evaluators.ids:
            rows[i].append(emb[i])
    return Gallery(np.array(labels), paths, {i: np.stack(v) for i, v in rows.items()})


def _impostors(gallery: Gallery) -> dict[str, np.ndarray]:
    """Per evaluator: the cosines of all clean impostor pairs of the gallery (each pair once)."""
    return {i: impostor_scores(e, gallery.labels) for i, e in gallery.embeddings.items()}


def _thresholds(impostors: dict[str, np.ndarray], far: float) -> dict[str, float]:
    """Per evaluator: the cosine threshold at ``far`` over its clean impostor pairs."""
    return {i: threshold_at_far(scores, far) for i, scores in impostors.items()}


def _load_probes(split, users: Sequence[str], evaluators) -> list[Probe]:
    probes = []
    for user in users:
        for path in split.probes[user]:
            image = load_face_photo(path)
            face = evaluators.pick(image, None)
            if face is None:
                raise EdgecloakError(f"{path}: no face found in a probe photo")
            probes.append(Probe(user, path, image, face.box, face.landmarks, zlib.crc32(path.name.encode())))
    return probes


def photo_face_support(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """[h, w] the face's support (``runtime.budget_map.face_support``) over the whole photo: what the
    evaluation calls the face when it measures how much of a mask lies off it (any method's)."""
    h, w = image.shape[:2]
    return face_support(FaceRegion(landmarks, (0, 0, w, h), {}, image_hw=(h, w)))


def protected_folder(out: Path, method: ProtectionMethod) -> Path:
    """Where a method's protected photos are kept: one folder per name and settings hash. A name may
    hold a '/' (``balanced+surrogates=a/b``): it is written as '_' so the folder stays one level.

    Example:
        >>> protected_folder(Path("out"), NoiseBaseline(eps=12.0)).name
        'noise-b06782f3ef'
    """
    return Path(out) / "protected" / f"{method.name.replace('/', '_')}-{method.key()}"


def _protect_all(method: ProtectionMethod, probes: list[Probe], split, out: Path, progress: bool) -> list[dict]:
    """Protect every probe (or read it back from an earlier run); one record per probe."""
    folder = protected_folder(out, method)
    records, prepared = [], False
    bar = _progress(len(probes), f"protect {method.name}", progress)
    try:
        for probe in probes:
            image_path = folder / probe.identity / f"{probe.path.stem}.png"
            meta_path = image_path.with_suffix(".json")
            if not (image_path.exists() and meta_path.exists()):
                if not prepared:
                    method.prepare(enrolment_photos(split))  # never a probe
                    prepared = True
                failed = None
                try:
                    result = method.protect(probe.image, probe.box, probe.identity, probe.seed)
                    image, target, seconds, self_check = result.image, result.target, result.seconds, result.self_check
                    steps = result.steps
                except EdgecloakError as exc:  # counted as unprotected (the user would get no photo)
                    image, target, seconds, failed, self_check, steps = probe.image, None, 0.0, str(exc), None, None
                x0, y0, x1, y1 = (int(round(v)) for v in probe.box)
                y0, x0 = max(0, y0), max(0, x0)
                face0, face1 = probe.image[y0:y1, x0:x1], image[y0:y1, x0:x1]
                meta = {
                    "identity": probe.identity, "photo": probe.path.name, "target": target, "seconds": seconds,
                    "failed": failed, "max_change": int(np.abs(image.astype(int) - probe.image.astype(int)).max()),
                    "psnr_face": psnr(face0, face1), "ssim_face": ssim(face0, face1),
                    "psnr_photo": psnr(probe.image, image), "ssim_photo": ssim(probe.image, image),
                    "outside_face": change_outside(probe.image, image, photo_face_support(probe.image, probe.landmarks)),
                    "backend": getattr(method, "backend_description", None), "self_check": self_check,
                    "steps": steps,
                }
                image_path.parent.mkdir(parents=True, exist_ok=True)
                save_image_atomic(image_path, image)
                write_json_atomic(meta_path, meta)
            meta = json.loads(meta_path.read_text())
            meta["image_path"] = str(image_path.relative_to(out))
            records.append(meta)
            bar.update()
    finally:
        bar.close()
        if prepared:
            method.close()
    return records


def _protect_job(job: tuple) -> str:
    """One method's photos in a fan-out worker (``EvalSettings.workers``); the results land in the cache."""
    method, probes, split, out = job
    _protect_all(method, probes, split, out, progress=False)
    return method.name


def _protected_already(method: ProtectionMethod, probes: list[Probe], out: Path) -> bool:
    folder = protected_folder(out, method)
    return all((folder / p.identity / f"{p.path.stem}.json").exists() for p in probes)


def _score(
    method: ProtectionMethod, records: list[dict], probes: list[Probe], out: Path, transforms: Sequence[str],
    evaluators, gallery: Gallery, thresholds: dict[str, float], all_identities: Sequence[str], progress: bool,
    strict: tuple[float, dict[str, float]] = (1e-3, {}),
) -> tuple[list[dict], list[dict]]:
    """Metric rows per (transform, evaluator) and per-probe outcomes for one method.

    ``strict``: (far_strict, its threshold per evaluator), for the protection success rates: the
    probe's similarity to its user is the max cosine over the user's gallery photos (the probe
    itself left out), to its targets the max over every target identity's gallery photos (the same
    target set as Rank-T: the other users; their optimisation photos, which the methods aimed at,
    are in no gallery)."""
    dodge_key, target_key = psr_keys(strict[0])
    per_probe: list[dict] = []
    outcomes: dict[tuple[str, str], list[dict]] = {}
    published: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {}  # (transform, evaluator) -> user -> embeddings
    bar = _progress(len(records) * len(transforms), f"score {method.name}", progress)
    for record, probe in zip(records, probes):
        protected = load_image(out / record["image_path"])
        targets = [n for n in all_identities if n != probe.identity]
        keep = np.array([p != probe.path for p in gallery.paths])  # the probe is not its own gallery
        for transform in transforms:
            image, scale = apply_transform(transform, protected)
            emb, redetected = evaluators.embed(image, probe.box * scale, probe.landmarks * scale)
            for eid in evaluators.ids:
                published.setdefault((transform, eid), {}).setdefault(probe.identity, []).append(emb[eid])
                g, labels = gallery.embeddings[eid][keep], gallery.labels[keep]
                m = rank_metrics(emb[eid][None], [probe.identity], [targets], g, list(labels))
                scores = g @ emb[eid]
                order = np.argsort(-scores)
                genuine = float(scores[labels == probe.identity].max())
                outcome = {**m, "dodged": float(genuine <= thresholds[eid]), "redetected": float(redetected)}
                if eid in strict[1]:
                    to_target = float(similarity_to(emb[eid][None], g, labels, [targets])[0])
                    outcome[dodge_key] = float(not accepted(genuine, strict[1][eid]))
                    outcome[target_key] = float(accepted(to_target, strict[1][eid]))
                outcomes.setdefault((transform, eid), []).append(outcome)
                per_probe.append({
                    "method": method.name, "identity": probe.identity, "photo": probe.path.name,
                    "transform": transform, "evaluator": eid, "nearest": str(labels[order[0]]),
                    "genuine_score": genuine, "target": record["target"],
                    **({"target_score": to_target} if eid in strict[1] else {}), **outcome,
                })
            bar.update()
    bar.close()
    rows = []
    for (transform, eid), items in outcomes.items():
        row = {"method": method.name, "transform": transform, "evaluator": eid,
               "white_box": eid in method.surrogates, "n": len(items)}
        for k in items[0]:
            row[k] = float(np.mean([o[k] for o in items]))
        if eid in strict[1]:  # two of a user's published photos accepted as one person (FAR strict)
            row["linkable"], row["linkable_pairs"] = linkability(published[(transform, eid)], strict[1][eid])
        rows.append(row)
    return rows, per_probe


RATE_KEYS = ("rank1_ut", "rank1_t")  # with the two protection success rates: the aggregates given as Rates


def _outcome_matrix(per_probe: list[dict], transform: str, evaluators: Sequence[str], key: str) -> np.ndarray:
    """[probes, evaluators] outcomes of one metric (probes in the order they were scored)."""
    cells = {(p["identity"], p["photo"], p["evaluator"]): p[key] for p in per_probe if p["transform"] == transform}
    photos = list(dict.fromkeys((p["identity"], p["photo"]) for p in per_probe if p["transform"] == transform))
    return np.array([[cells[(*photo, e)] for e in evaluators] for photo in photos], dtype=np.float64)


def _summaries(method: ProtectionMethod, rows: list[dict], records: list[dict], per_probe: Sequence[dict] = (),
               far_strict: float = 1e-3) -> list[dict]:
    """Per transform: white-box and black-box means over evaluators, plus image quality and cost.

    From ``per_probe`` also the protection success rates at ``far_strict`` (means over evaluators)
    and, for Rank-1-UT, Rank-1-T and both rates, ``<side>_<metric>_rate``: a ``Rate`` dict (value, n
    probes, 95% interval bootstrapped over probes, each probe with all its evaluators' outcomes).

    Every summary has ``held_out_family`` (None but for leave-one-family-out methods); those also get
    ``held_out_evaluators`` (the family's members among the run's evaluators), ``held_out_rank1_ut``
    and ``held_out_<PSR dodge key>``, each with its ``_rate`` dict, scored on those evaluators only.
    """
    psr = psr_keys(far_strict)
    out = []
    quality = {}
    for k in ("psnr_face", "ssim_face", "psnr_photo", "ssim_photo", "outside_face", "seconds"):
        # PSNR of an unchanged photo is inf; photos protected before a measure existed lack it
        finite = [r[k] for r in records if r.get(k) is not None and np.isfinite(r[k])]
        quality[k] = float(np.mean(finite)) if finite else None
    for transform in dict.fromkeys(r["transform"] for r in rows):
        checks = [r["self_check"] for r in records if r.get("self_check") is not None]
        steps = [r["steps"] for r in records if r.get("steps") is not None]
        summary = {"method": method.name, "family": method.family, "transform": transform,
                   "self_check_passed": float(np.mean(checks)) if checks else None,
                   "steps": float(np.mean(steps)) if steps else None,
                   "surrogates": list(method.surrogates), "sweep": list(method.sweep) if method.sweep else None,
                   "settings": method.settings(), "failed": sum(1 for r in records if r.get("failed")),
                   "probes": len(records), "held_out_family": getattr(method, "held_out_family", None), **quality}
        if summary["held_out_family"] is not None:  # leave-one-family-out: scored on the family's members only
            members = FAMILIES[summary["held_out_family"]]
            held = [r for r in rows if r["transform"] == transform and r["evaluator"] in members]
            summary["held_out_evaluators"] = [r["evaluator"] for r in held]
            for k in ("rank1_ut", psr[0]):
                present = [r[k] for r in held if k in r]
                summary[f"held_out_{k}"] = float(np.mean(present)) if present else None
                values = held_out_values(per_probe, method.name, summary["held_out_evaluators"], k, transform)
                summary[f"held_out_{k}_rate"] = Rate.of(np.array(list(values.values()))).to_dict() if values else None
        for side, flag in (("white_box", True), ("black_box", False)):
            chosen = [r for r in rows if r["transform"] == transform and r["white_box"] == flag]
            for k in ("rank1_ut", "rank5_ut", "rank1_t", "rank5_t", "dodged"):
                summary[f"{side}_{k}"] = float(np.mean([r[k] for r in chosen])) if chosen else None
            linked = [r["linkable"] for r in chosen if r.get("linkable") is not None]
            summary[f"{side}_linkable"] = float(np.mean(linked)) if linked else None
            if not per_probe:
                continue
            evaluators = [r["evaluator"] for r in chosen]
            for k in psr:
                summary[f"{side}_{k}"] = float(np.mean([r[k] for r in chosen])) if chosen else None
            for k in (*RATE_KEYS, *psr):
                summary[f"{side}_{k}_rate"] = (Rate.of(_outcome_matrix(per_probe, transform, evaluators, k)).to_dict()
                                               if chosen else None)
        out.append(summary)
    return out


def run_evaluation(settings: EvalSettings, progress: bool = True, log: Callable[[str], None] = print,
                   extra_methods: Sequence[ProtectionMethod] = ()) -> dict[str, Any]:
    """Run the evaluation (resumable), write ``results.json`` into ``settings.out`` and return it.

    ``extra_methods`` are evaluated after the named ones (the calibration's sweep points).
    """
    if settings.backend not in ("auto", *BACKENDS):
        raise UsageError(f"unknown backend {settings.backend!r}; choose from auto, {', '.join(BACKENDS)}")
    # leave-one-family-out methods per preset (an unknown preset: UsageError, before any work)
    cross = {preset: cross_family_methods(preset, settings.backend, settings.seed, settings.evaluators, log)
             for preset in dict.fromkeys(settings.cross_family)}
    started = time.time()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    catalogue = method_catalogue(settings.backend, settings.seed)
    unknown = [m for m in settings.methods if m not in catalogue]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(catalogue)}")
    bad = [t for t in settings.transforms if t not in UPLOAD_TRANSFORMS]
    if bad:
        raise UsageError(f"unknown transform(s) {', '.join(bad)}; choose from {', '.join(UPLOAD_TRANSFORMS)}")
    photos, others = evaluation_photos(settings.distractors)
    users = list(settings.identities) if settings.identities else sorted(photos)
    missing = [u for u in users if u not in photos]
    if missing:
        raise UsageError(f"unknown identit(ies) {', '.join(missing)}; choose from {', '.join(sorted(photos))}")
    try:
        split = split_photos(photos, settings.probes_per_identity, settings.targets_per_identity)
    except ValueError as exc:
        raise UsageError(f"{exc}; ask for fewer --probes") from None

    evaluators = Evaluators(settings.evaluators, Path(settings.cache_dir or edgecloak_home() / "eval-cache"))
    gallery = _build_gallery(split, others, evaluators, progress)
    impostors = _impostors(gallery)
    thresholds = _thresholds(impostors, settings.far)
    strict_thresholds = _thresholds(impostors, settings.far_strict)
    pairs = {i: len(v) for i, v in impostors.items()}
    unresolved = [i for i, n in pairs.items() if not far_resolved(n, settings.far_strict)]
    if unresolved:  # the threshold is then the maximum impostor score (no impostor passes)
        log(f"note: {', '.join(unresolved)}: {min(pairs.values())} impostor pairs cannot resolve FAR "
            f"{settings.far_strict:g}; its threshold is the highest impostor score")
    probes = _load_probes(split, users, evaluators)
    log(f"{len(probes)} probes of {len(users)} user(s); gallery {len(gallery.labels)} faces "
        f"({len(set(gallery.labels))} identities); evaluators {', '.join(evaluators.ids)}")

    methods = [catalogue[m] for m in settings.methods]
    methods += [bundle_method(name, path, settings.backend, settings.seed) for name, path in settings.bundles.items()]
    if settings.sweeps:
        methods += sweep_methods(settings.backend, settings.seed)
    methods += [m for cf in cross.values() for m in cf]
    methods += list(extra_methods)
    if settings.workers > 1 or settings.ray:
        jobs = [(m, probes, split, out) for m in methods if not _protected_already(m, probes, out)]
        log(f"protecting {len(jobs)} method(s) on {settings.workers} {'Ray' if settings.ray else 'local'} worker(s)")
        for name in fan_out(_protect_job, jobs, settings.workers, settings.ray, settings.ray_address):
            log(f"{name:>16}: protected")
    rows, summary, per_probe, records_by_method, backends = [], [], [], {}, {}
    dodge_key = psr_keys(settings.far_strict)[0]
    for method in methods:
        records = _protect_all(method, probes, split, out, progress)
        transforms = settings.transforms if method.family not in ("sweep", CROSS_FAMILY) else ["none"]
        method_rows, method_probes = _score(method, records, probes, out, transforms, evaluators, gallery, thresholds,
                                            sorted(photos), progress, (settings.far_strict, strict_thresholds))
        rows += method_rows
        per_probe += method_probes
        summary += _summaries(method, method_rows, records, method_probes, settings.far_strict)
        records_by_method[method.name] = records
        backends[method.name] = sorted({r["backend"] for r in records if r.get("backend")})
        head = next(s for s in summary if s["method"] == method.name and s["transform"] == "none") \
            if "none" in transforms else summary[-1]
        log(f"{method.name:>16}: white-box R1-UT {_fmt(head['white_box_rank1_ut'])} R1-T {_fmt(head['white_box_rank1_t'])}"
            f" | black-box R1-UT {_fmt(head['black_box_rank1_ut'])} R1-T {_fmt(head['black_box_rank1_t'])}"
            f" | PSNR face {_fmt(head['psnr_face'], 1)} dB, {head['seconds']:.1f} s/photo")
        if head.get("held_out_family"):
            log(f"{'':>16}  held-out {head['held_out_family']} ({', '.join(head['held_out_evaluators'])}): "
                f"R1-UT {_fmt(head['held_out_rank1_ut'])}, PSR dodge {_fmt(head.get(f'held_out_{dodge_key}'))}")

    cross_family, held_for = {}, {}
    for preset, cf_methods in cross.items():
        held = {m.held_out_family: (m.name, [e for e in evaluators.ids if e in FAMILIES[m.held_out_family]])
                for m in cf_methods}
        held_for[preset] = held
        cross_family[preset] = {
            "transform": "none", "metrics": ["rank1_ut", dodge_key],
            "methods": {f: name for f, (name, _) in held.items()},
            "surrogates": {m.held_out_family: list(m.surrogates) for m in cf_methods},
            "scored_on": {f: members for f, (_, members) in held.items()},
            "skipped": [f for f in FAMILIES if f not in held],
            **cross_family_table(per_probe, held, ("rank1_ut", dodge_key)),
        }
    # every judged recipe against the first one, paired over probes: is a change outside the noise?
    specs = list(cross_family)
    for spec in specs[1:]:
        first = specs[0]
        cross_family[spec]["versus"] = {"against": first, **{
            k: paired_difference(*(cross_family_values(per_probe, held_for[s], k) for s in (first, spec)))
            for k in cross_family[spec]["metrics"]}}
    results = {
        "settings": settings.to_dict(),
        "versions": _versions(),
        "protocol": {
            "users": users, "probes": [{"identity": p.identity, "photo": p.path.name, "box": [round(float(v), 1) for v in p.box]}
                       for p in probes],
            "optimisation_photos": {n: [p.name for p in ps] for n, ps in split.optimisation.items()},
            "gallery_faces": len(gallery.labels), "gallery_identities": sorted(set(gallery.labels.tolist())),
            "thresholds_at_far": thresholds, "far": settings.far,
            "thresholds_at_far_strict": strict_thresholds, "far_strict": settings.far_strict,
            "impostor_pairs": pairs,
            "far_strict_resolved": {i: far_resolved(n, settings.far_strict) for i, n in pairs.items()},
        },
        "backends": backends,
        "summary": summary,
        "cross_family": cross_family,
        "rows": rows,
        "per_probe": per_probe,
        "records": records_by_method,
        "seconds": time.time() - started,
        "embeddings_computed": evaluators.computed,
    }
    write_json_atomic(out / "results.json", results)
    return results


def _fmt(v: float | None, digits: int = 2) -> str:
    return "  - " if v is None else f"{v:.{digits}f}"
