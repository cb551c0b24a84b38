"""The protection methods an evaluation compares, behind one interface.

Baselines (no protection, uniform noise at the same eps, Gaussian blur of the face) and the
TIP-IM family, all driven through the SDK's ``Cloaker`` so the photos evaluated are exactly what
users get:

* ``tipim``: TIP-IM on the runtime (any of its backends), with the probe's target identities (the
  other protected users, embedded from their optimisation photos).
* ``mifgsm``: untargeted MI-FGSM dodging. With one target whose embedding is the zero vector the
  TIP-IM identity loss ``D(x, t) - D(x, r)`` becomes ``-D(x, r)`` up to a constant, the dodging
  loss, and greedy insertion over one candidate is a no-op: the same loop (momentum, mean-|g|
  normalisation, sign step, projection, input diversity) without the targeting.

Example:
    >>> m = NoiseBaseline(eps=12)
    >>> m.name, m.surrogates
    ('noise', ())
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import cv2
import numpy as np

from edgecloak.cloaker import Cloaker
from edgecloak.enrolment import DEFAULT_PROFILE_STEPS, ENROL_PASSES, PROFILE_MASKS
from edgecloak.policy import SafetyPolicy
from edgecloak.recipe import Recipe, resolve
from edgecloak.runtime.config import TIPIMConfig
from edgecloak.runtime.face_region import grown_box as face_region
from edgecloak.export.zoo.photos import load_face_photo
from edgecloak.runtime.profile import CloakProfile
from edgecloak.runtime.protector import RuntimeProtector
from edgecloak.runtime.targets import TargetBank


@dataclass
class Protected:
    """One protected photo: the pixels, the target the method settled on (if any), seconds spent."""

    image: np.ndarray
    target: str | None
    seconds: float
    self_check: bool | None = None  # whether the SDK's self-check passed the scored face (TIP-IM only)
    steps: int | None = None  # iterations the scored face got, self-check retries included (TIP-IM only)


class ProtectionMethod:
    """A way of protecting a face photo. Subclasses set ``name`` and write ``protect``.

    ``surrogates`` are the recognizers the method optimised on: evaluators among them are its
    white-box recognizers, all others black-box. ``sweep`` marks points of a parameter sweep
    (``("steps", 8)``), evaluated on clean uploads only.
    """

    name: str = "method"
    family: str = "baseline"
    surrogates: tuple[str, ...] = ()
    sweep: tuple[str, float] | None = None

    def settings(self) -> dict[str, Any]:
        """What the method's output depends on (goes into results.json and the cache key)."""
        return {}

    def key(self) -> str:
        """A short stable hash of name + settings: protected photos are cached under it."""
        blob = json.dumps({"name": self.name, **self.settings()}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def prepare(self, target_photos: Mapping[str, Sequence[Path]]) -> None:
        """Load what the method needs (models, target banks); called once before the first photo."""

    def protect(self, image: np.ndarray, face_box: Sequence[float], identity: str, seed: int) -> Protected:
        raise NotImplementedError

    def close(self) -> None:
        """Release models."""


class NoProtection(ProtectionMethod):
    """The clean photo: the row every protection is compared with."""

    name = "none"

    def protect(self, image, face_box, identity, seed):
        return Protected(image.copy(), None, 0.0)


class NoiseBaseline(ProtectionMethod):
    """Uniform random integer noise in [-eps, eps] over the face region (same budget as TIP-IM)."""

    name = "noise"

    def __init__(self, eps: float = 12.0):
        self.eps = eps

    def settings(self):
        return {"eps": self.eps}

    def protect(self, image, face_box, identity, seed):
        t0 = time.perf_counter()
        x0, y0, x1, y1 = face_region(face_box, image.shape)
        rng = np.random.default_rng(seed)
        out = image.astype(np.int16)
        e = int(np.floor(self.eps))
        out[y0:y1, x0:x1] += rng.integers(-e, e + 1, size=out[y0:y1, x0:x1].shape, dtype=np.int16)
        return Protected(np.clip(out, 0, 255).astype(np.uint8), None, time.perf_counter() - t0)


class BlurBaseline(ProtectionMethod):
    """Gaussian blur of the face region: the obfuscation people reach for first."""

    name = "blur"

    def __init__(self, sigma: float = 3.0):
        self.sigma = sigma

    def settings(self):
        return {"sigma": self.sigma}

    def protect(self, image, face_box, identity, seed):
        t0 = time.perf_counter()
        x0, y0, x1, y1 = face_region(face_box, image.shape)
        out = image.copy()
        out[y0:y1, x0:x1] = cv2.GaussianBlur(image[y0:y1, x0:x1], (0, 0), self.sigma)
        return Protected(out, None, time.perf_counter() - t0)


@dataclass
class CloakerMethod(ProtectionMethod):
    """TIP-IM (or its untargeted MI-FGSM special case) through the SDK's ``Cloaker``.

    ``backend``: the runtime backend (``auto``, ``onnxruntime``, ...) that runs the cached bundle for
    these surrogates, with as many graph targets as the evaluation has target identities (a
    graph's K costs compute whether used or not).
    """

    name: str = "tipim"
    surrogates: tuple[str, ...] = ("mobileface",)
    config: dict[str, Any] = field(default_factory=dict)
    backend: str = "auto"
    untargeted: bool = False
    family: str = "tipim"
    sweep: tuple[str, float] | None = None
    bundle: Path | None = None  # a given bundle (its surrogates and preset) instead of the cached one
    # self-check retries as the product runs them (0: the loop as configured, N stays N); with
    # retries the method is the SDK's whole adaptive budget and its seconds include the retries
    retries: int = 0
    num_targets: int | None = None  # chase only the first K target identities (graphs of that K)
    # leave-one-family-out: the recognizer family (``protocol.FAMILIES``) whose members were taken out
    # of the surrogates; the method's held-out score is on that family's evaluators only
    held_out_family: str | None = None

    def __post_init__(self) -> None:
        self.cloaker = None
        self.banks: dict[str, TargetBank] = {}

    def settings(self):
        out = {"surrogates": list(self.surrogates), "config": self.config, "backend": self.backend,
               "untargeted": self.untargeted}
        if self.retries:  # only when set, so earlier runs' cached photos keep their keys
            out["retries"] = self.retries
        if self.num_targets is not None:
            out["num_targets"] = self.num_targets
        if self.bundle is not None:  # the manifest's hash names the bundle's exact contents
            out["bundle"] = hashlib.sha256((Path(self.bundle) / "manifest.json").read_bytes()).hexdigest()[:16]
        return out

    def prepare(self, target_photos):
        num_targets = 1 if self.untargeted else max(1, len(target_photos) - 1)
        if self.num_targets is not None:
            num_targets = min(num_targets, self.num_targets)
        # every photo emitted and scored; retries only where the method asks (see ``retries``)
        policy = SafetyPolicy(retries=self.retries, on_fail="keep")
        if self.bundle is not None:
            recipe = resolve(bundle=self.bundle, settings=self.config, policy=policy)
        else:  # no preset: these surrogates, graphs of the evaluation's K, the method's own settings
            recipe = Recipe(tuple(self.surrogates), num_targets, TIPIMConfig(**self.config), policy)
        self.cloaker = Cloaker.from_recipe(recipe, self.backend)
        identities = identity_embeddings(self.cloaker.protector, target_photos)
        self.banks = {}
        for user in target_photos:
            if self.untargeted:
                bank = TargetBank(["(untargeted)"], {k: np.zeros_like(v[:1]) for k, v in identities.embeddings.items()})
            else:
                others = [i for i, n in enumerate(identities.identities) if n != user]
                bank = identities.select(others[:num_targets])
            self.banks[user] = bank

    @property
    def backend_description(self) -> str:
        return self.cloaker.backend if self.cloaker is not None else self.backend

    def protect(self, image, face_box, identity, seed):
        t0 = time.perf_counter()
        result = self.cloaker.protect(image, targets=self.banks[identity])
        seconds = time.perf_counter() - t0
        # the report's target is the one of the face the evaluation scores (the largest)
        face = max(result.faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        if self.untargeted:  # no target, so no margin to check
            return Protected(result.image, None, seconds)
        return Protected(result.image, face.target, seconds, face.action == "cloaked", face.steps)

    def close(self):
        if self.cloaker is not None:
            self.cloaker.protector.close()
            self.cloaker = None


@dataclass
class ProfileMethod(CloakerMethod):
    """TIP-IM started from per-user cloak profiles (``edgecloak.enrolment``): every user is enrolled
    once, on the photos the evaluation gives ``prepare`` (the split's optimisation photos, never a
    probe: ``protocol.enrolment_photos``), towards a target among their bank; each probe of theirs
    then starts from the profile and runs ``profile_steps`` (0: the mask as it is). ``seconds`` per
    photo is the protect time (the one-off enrolment is not in it)."""

    name: str = "profile"
    family: str = "profile"
    profile_steps: int = DEFAULT_PROFILE_STEPS
    passes: int = ENROL_PASSES
    enrol_steps: int | None = None  # iterations per enrolment photo and pass (None: the recipe's N)
    masks: int = PROFILE_MASKS  # masks per profile, one drawn per photo

    def __post_init__(self) -> None:
        super().__post_init__()
        self.profiles: dict[str, CloakProfile] = {}

    def settings(self):
        return {**super().settings(), "profile_steps": self.profile_steps, "passes": self.passes,
                "enrol_steps": self.enrol_steps, "masks": self.masks}

    # enrolments made in this process, by everything they depend on: methods that differ only in
    # ``profile_steps`` (the 0- and 2-step rows of a sweep) share one enrolment per user
    _enrolled: ClassVar[dict[str, CloakProfile]] = {}

    def prepare(self, target_photos):
        super().prepare(target_photos)
        for user, photos in target_photos.items():
            key = json.dumps([self.surrogates, self.config, self.backend, self.num_targets, self.passes,
                              self.enrol_steps, self.masks, user, [str(p) for p in photos], self.banks[user].identities],
                             sort_keys=True, default=str)
            if key not in ProfileMethod._enrolled:
                images = [load_face_photo(p) for p in photos]
                ProfileMethod._enrolled[key] = self.cloaker.enroll(
                    images, f"user-{len(self.profiles)}", save=False, passes=self.passes, steps=self.enrol_steps,
                    masks=self.masks, targets=self.banks[user])
            self.profiles[user] = ProfileMethod._enrolled[key]

    def protect(self, image, face_box, identity, seed):
        self.cloaker.use_profile(self.profiles[identity], self.profile_steps)
        return super().protect(image, face_box, identity, seed)


def identity_embeddings(protector: RuntimeProtector, photos: Mapping[str, Sequence[Path]]) -> TargetBank:
    """One unit embedding per identity and surrogate: the normalised mean over its photos' largest faces.

    ``protector`` is a ``RuntimeProtector`` (numpy embeddings in, a numpy bank out).
    """
    names, rows = [], {}
    for name, paths in photos.items():
        per_photo: dict[str, list[np.ndarray]] = {}
        for path in paths:
            image = load_face_photo(path)
            face = protector.detector.largest_face(image, str(path))
            for sid, emb in protector.embed_face(image, face.landmarks).items():
                per_photo.setdefault(sid, []).append(emb[0])
        names.append(name)
        for sid, vecs in per_photo.items():
            mean = np.mean(vecs, axis=0)
            rows.setdefault(sid, []).append(mean / np.linalg.norm(mean))
    return TargetBank(names, {sid: np.stack(v).astype(np.float32) for sid, v in rows.items()})
