"""The SDK: ``Cloaker`` protects every face of a photo with TIP-IM masks.

How a photo travels: safe decode (EXIF orientation applied, metadata dropped) -> MTCNN faces with
5 landmarks -> for each face, TIP-IM optimises the photo pixels of the face region as seen through
each surrogate's alignment -> uint8 result within +-eps of the original on every pixel -> self-check
(fail closed) -> atomic write of a metadata-free file. The surrogates run in the torch-free runtime
on a cloak bundle (``edgecloak.runtime.protector``), on any backend (ONNX Runtime, TensorRT, or
torch as one more engine). What it runs with is a ``Recipe`` (``edgecloak.recipe.resolve``).

Example:
    >>> from edgecloak.cloaker import Cloaker
    >>> cloaker = Cloaker.load()                                    # doctest: +SKIP
    >>> result = cloaker.protect_file("me.jpg", "out/me.png")       # doctest: +SKIP
    >>> [f.target for f in result.faces]                            # doctest: +SKIP
    ['t1-face3']
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from edgecloak.errors import NoFaceError, OutputError, ProtectionFailedError, UsageError
from edgecloak.policy import ON_FAIL_POLICIES, SafetyPolicy  # noqa: F401  (part of the SDK's surface)
from edgecloak.enrolment import DEFAULT_PROFILE_STEPS, ENROL_PASSES, PROFILE_MASKS, enroll
from edgecloak.recipe import Recipe, bundle_for, resolve
from edgecloak.runtime.atomic import write_bytes_atomic
from edgecloak.runtime.detect.mtcnn import DetectedFace
from edgecloak.runtime.face_region import FaceRegion, box_iou, grown_box
from edgecloak.runtime.image_io import OutputFormat, load_image
from edgecloak.runtime.profile import CloakProfile, load_profile, save_profile
from edgecloak.runtime.protector import RuntimeProtector
from edgecloak.runtime.targets import TargetBank


@dataclass
class FaceReport:
    """One face: where it is, what was done to it, which target it was pushed to, how far it moved.

    ``similarity`` maps surrogate id to cosine similarities measured by re-detecting the face in the
    protected image (as a recognizer downstream would):
    ``{"original_after": cos(protected, unprotected face), "target_before": ..., "target_after": ...}``.
    ``action``: ``cloaked`` (passed the self-check), ``obscured`` (failed; mosaic, ``--on-fail
    blur-face``) or ``kept`` (failed; left as it is, ``--on-fail keep``); ``reason`` says why a
    face failed. ``steps`` counts the iterations the face got, retries included.
    """

    box: tuple[float, float, float, float]
    landmarks: list[list[float]]
    target: str | None
    similarity: dict[str, dict[str, float]] = field(default_factory=dict)
    redetected: bool = True
    margin: float | None = None
    action: str = "cloaked"
    reason: str | None = None
    steps: int = 0
    warm_started: bool = False
    profile_started: bool = False  # started from the user's enrolled cloak profile (``Cloaker.profile``)

    @property
    def protected(self) -> bool:
        return self.action in ("cloaked", "obscured")


@dataclass
class WarmStart:
    """What one video frame hands to the next: its mask, and where each face was and went.

    A face of the next frame that overlaps one of ``faces`` (IoU > 0.5) starts from the previous
    mask, moved with the face, keeps its target (no flicker between identities), and runs ``steps``
    iterations instead of the full count.
    """

    delta: np.ndarray  # int16 H x W x 3: protected - original
    faces: list[tuple[np.ndarray, str]]  # (box, target identity)
    steps: int


@dataclass
class Result:
    """The emitted photo (HxWx3 uint8 RGB) and one report per face.

    With an ``output`` format (``Cloaker.protect(..., output=...)``), ``encoded`` holds the file
    bytes to write and ``image`` is what they decode to: the self-check and ``max_abs_change`` were
    measured on those pixels, so a lossy format that erodes the mask cannot pass unnoticed. Without
    one, ``image`` is the uint8 result itself and ``encoded`` is None.
    """

    image: np.ndarray
    faces: list[FaceReport]
    max_abs_change: int  # largest |written - original| over the photo (JPEG error included; obscured faces excluded)
    delta: np.ndarray | None = None  # int16 mask of the cloaked faces, for warm starts
    mask_max_abs_change: int = 0  # largest |mask| before encoding: never above floor(eps)
    encoded: bytes | None = None  # the file bytes, when an output format was given
    output: OutputFormat | None = None

    @property
    def protected(self) -> bool:
        """Every face cloaked (passed the self-check) or obscured; False when one was kept unprotected."""
        return bool(self.faces) and all(f.protected for f in self.faces)

    def warm_start(self, steps: int) -> WarmStart:
        """The state a following video frame starts from (see ``WarmStart``)."""
        faces = [(np.asarray(f.box), f.target) for f in self.faces if f.action == "cloaked" and f.target]
        delta = self.delta if self.delta is not None else np.zeros(self.image.shape, np.int16)
        return WarmStart(delta, faces, steps)


def obscure(image: np.ndarray, box) -> None:
    """Hide a face in place: a mosaic of ~8 blocks across the grown box, then a blur."""
    x0, y0, x1, y1 = grown_box(box, image.shape, margin=0.2)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    patch = image[y0:y1, x0:x1]
    small = cv2.resize(patch, (8, max(1, round(8 * (y1 - y0) / (x1 - x0)))), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(small, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    image[y0:y1, x0:x1] = cv2.GaussianBlur(coarse, (0, 0), max(1.0, (x1 - x0) / 16))


@dataclass
class _FacePlan:
    """One face's way through ``Cloaker.protect`` (detection -> cloak -> self-check -> retries)."""

    face: DetectedFace
    region: FaceRegion | None = None  # the face's geometry, built once and used by every pass
    user: dict | None = None
    targets: TargetBank | None = None
    t_index: int | None = None
    steps: int = 0
    last_steps: int = 0
    warm_started: bool = False
    profile_started: bool = False
    similarity: dict = field(default_factory=dict)
    margin: float | None = None
    redetected: bool = True
    reason: str | None = None  # why it could not be cloaked at all
    action: str = "cloaked"

    def passed(self, policy: SafetyPolicy) -> bool:
        return self.reason is None and self.margin is not None and self.margin > policy.min_margin

    def failure(self, policy: SafetyPolicy) -> str:
        return self.reason or f"self-check margin {self.margin:.2f} <= {policy.min_margin:g} after {self.steps} steps"

    def advice(self, policy: SafetyPolicy, output: OutputFormat | None) -> str:
        """What the user can do about this face's failure (only advice that can help)."""
        emit = "--on-fail blur-face or keep emits the photo anyway"
        if self.reason is not None and self.reason.startswith("face too small"):
            return f"a larger photo of the face, or a lower --min-face, may help; {emit}"
        if self.reason is not None:
            return emit
        if output is not None and output.lossy:
            return f"a higher --jpeg-quality, PNG output, more --steps or a larger --eps may help; {emit}"
        return f"more --steps or a larger --eps may help; {emit}"

    def report(self, policy: SafetyPolicy) -> FaceReport:
        return FaceReport(
            box=tuple(float(v) for v in self.face.box),
            landmarks=np.asarray(self.face.landmarks).round(2).tolist(),
            target=None if self.t_index is None else self.targets.identities[self.t_index],
            similarity=self.similarity, redetected=self.redetected, margin=self.margin, action=self.action,
            reason=None if self.passed(policy) else self.failure(policy), steps=self.steps,
            warm_started=self.warm_started, profile_started=self.profile_started,
        )


class Cloaker:
    """Protects photos: drives the runtime's face protector on a bundle, per a ``Recipe``.

    Not re-entrant: one ``protect`` runs at a time per instance (an internal lock serialises calls
    from several threads); make one Cloaker per worker to run in parallel.
    """

    def __init__(self, protector: RuntimeProtector, targets: TargetBank | None = None,
                 policy: SafetyPolicy | None = None, recipe: Recipe | None = None):
        self.protector = protector
        self.recipe = recipe
        self.policy = policy or (recipe.policy if recipe is not None else SafetyPolicy())
        self.detector = protector.detector
        self.targets = targets if targets is not None else protector.targets
        self.config = protector.config
        self.profile: CloakProfile | None = None  # see ``use_profile``
        self.profile_steps = DEFAULT_PROFILE_STEPS
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        """What runs the surrogates, in words (for logs and reports)."""
        return self.protector.backend_description

    def use_profile(self, profile: CloakProfile | str | os.PathLike[str] | None,
                    steps: int = DEFAULT_PROFILE_STEPS) -> None:
        """Start the profile owner's faces from one of their enrolled masks, drawn per photo (by name,
        folder or object; None: stop), with ``steps`` iterations of refinement (0: the mask as it is).
        Other faces, and an owner's face for which no mask's target is among this photo's targets,
        get the normal loop; the self-check, retries and fail-closed rules hold either way.

        Example:
            >>> cloaker.use_profile("me", steps=2)          # doctest: +SKIP
            >>> cloaker.protect(photo).faces[0].profile_started   # doctest: +SKIP
            True
        """
        if steps < 0:
            raise UsageError(f"profile steps must be >= 0, got {steps}")
        if profile is not None and not isinstance(profile, CloakProfile):
            profile = load_profile(profile)
        if profile is not None and tuple(profile.surrogates) != tuple(self.protector.surrogate_ids):
            raise UsageError(f"profile {profile.name!r} was enrolled on {','.join(profile.surrogates)}, this cloaker "
                             f"runs {','.join(self.protector.surrogate_ids)}; use the preset it was enrolled with")
        self.profile, self.profile_steps = profile, int(steps)

    def enroll(self, photos: Sequence[str | os.PathLike[str] | np.ndarray], name: str, save: bool = True,
               passes: int = ENROL_PASSES, steps: int | None = None, masks: int = PROFILE_MASKS,
               targets: TargetBank | None = None,
               progress: Callable[[int, int], None] | None = None) -> CloakProfile:
        """Enrol a user from several photos of them (``edgecloak.enrolment.enroll``) and, with ``save``,
        keep the profile under ``$EDGECLOAK_HOME/profiles/<name>`` (owner-only; an existing profile of
        that name is refused). The photos themselves are not kept. ``targets``: the identities the
        masks may chase (default: this cloaker's).

        Example:
            >>> profile = cloaker.enroll(["me1.jpg", "me2.jpg", "me3.jpg"], "me")   # doctest: +SKIP
        """
        with self._lock:
            profile = enroll(self.protector, self.config, self.targets if targets is None else targets, photos, name,
                             passes=passes, steps=steps, masks_count=masks,
                             preset=self.recipe.preset if self.recipe is not None else None, progress=progress)
        if save:
            save_profile(profile)
        return profile

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike[str] | None = None,
        backend: str = "auto",
        preset: str | None = None,
        surrogates: Sequence[str] | None = None,
        target_photos: Sequence[str | os.PathLike[str]] = (),
        num_targets: int | None = None,
        policy: SafetyPolicy | None = None,
        **settings,
    ) -> "Cloaker":
        """A cloaker for a preset (default ``balanced``) or a ``bundle`` folder, with overrides.

        The recipe comes from ``edgecloak.recipe.resolve(preset, bundle, surrogates=...,
        settings=settings, policy=policy)``: ``fast`` / ``balanced`` / ``max`` are measured, ``paper``
        / ``edge`` fixed (``edgecloak.presets``); ``surrogates`` replaces a preset's; ``settings``
        are ``TIPIMConfig`` fields (eps, steps, alpha, mu, norm, gamma, seed, ...) overriding the
        preset's or bundle's; ``policy`` is the self-check and what to do when it fails (default:
        drop the photo, after the preset's retries or those the bundle was exported with).
        ``target_photos`` replaces the target identities; ``num_targets`` chases only the first K
        of them. ``backend``: ``auto``, ``onnxruntime``, ``tensorrt`` or ``torch`` (see
        ``from_recipe`` for where a preset's bundle comes from).

        Example:
            >>> cloaker = Cloaker.load(preset="edge")           # doctest: +SKIP
            >>> cloaker.backend                                  # doctest: +SKIP
            'onnxruntime 1.23.2 [CPUExecutionProvider] (auto; skipped tensorrt: ...)'
        """
        recipe = resolve(preset, bundle, surrogates=surrogates, settings=settings, policy=policy)
        return cls.from_recipe(recipe, backend, target_photos=target_photos, num_targets=num_targets)

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe,
        backend: str = "auto",
        target_photos: Sequence[str | os.PathLike[str]] = (),
        num_targets: int | None = None,
    ) -> "Cloaker":
        """A cloaker that runs ``recipe`` on ``backend``.

        A recipe without a bundle runs the cached bundle for it: a workstation (the export extra
        installed) exports it into the cache on first use, with torch programs for
        ``backend="torch"``; a device runs the cached bundle as it is, or gets one ``ModelError``
        line saying how to get one (no export code is even imported there).

        Example:
            >>> Cloaker.from_recipe(resolve("fast"), "onnxruntime").config.steps   # doctest: +SKIP
            8
        """
        if num_targets is not None and num_targets < 1:
            raise UsageError(f"the number of targets must be >= 1, got {num_targets}")
        bundle = bundle_for(recipe, with_torch=backend == "torch")
        protector = RuntimeProtector.from_bundle(bundle, backend, recipe.config)
        targets = protector.targets_from_photos(target_photos) if target_photos else protector.targets
        if num_targets is not None:
            targets = targets.select(range(min(num_targets, targets.size)))
        return cls(protector, targets, recipe.policy, recipe)

    def protect(
        self,
        image: np.ndarray,
        on_step: Callable[[int], None] | None = None,
        targets: TargetBank | None = None,
        warm: WarmStart | None = None,
        output: OutputFormat | None = None,
    ) -> Result:
        """Protect every detected face of an RGB uint8 image; the input array is not modified.

        Every face is cloaked, self-checked and retried per ``self.policy`` (see ``SafetyPolicy``);
        with ``on_fail="drop"`` a photo with an unprotected face raises ``ProtectionFailedError``.
        ``output`` encodes the result (PNG or JPEG) and runs the self-check on the decoded bytes,
        which ``Result.encoded`` then holds: what is checked is exactly what gets written.
        ``targets`` replaces this cloaker's target identities for this photo only (embedded by the
        same surrogates, e.g. with ``protector.embed_face``). ``warm`` continues from
        the previous video frame (``Result.warm_start``). Raises ``NoFaceError`` (path "image") when
        no face is found.

        Example:
            >>> result = cloaker.protect(load_image("me.jpg"))          # doctest: +SKIP
            >>> [(f.action, round(f.margin, 2)) for f in result.faces]  # doctest: +SKIP
            [('cloaked', 0.17)]
        """
        bank = self.targets if targets is None else targets
        policy = self.policy
        with self._lock:
            faces = self.detector.detect(image)
            if not faces:
                raise NoFaceError("image")
            if warm is not None and warm.delta.shape != image.shape:
                warm = None  # another resolution: start afresh
            current = image.copy()
            plans = [_FacePlan(face) for face in faces]
            for plan in plans:
                self._first_attempt(plan, image, current, bank, warm, on_step)
            written = self._encode_and_check(image, current, plans, output)
            for _ in range(policy.retries):
                failing = [p for p in plans if p.t_index is not None and not p.passed(policy)]
                if not failing:
                    break
                for plan in failing:  # twice the last pass, and never fewer than a full pass
                    self._run(plan, image, current, plan.targets, max(2 * plan.last_steps, int(self.config.steps)), None)
                written = self._encode_and_check(image, current, plans, output)
            delta = current.astype(np.int16) - image.astype(np.int16)
            mask_change = int(np.abs(delta).max())
            # Fail closed: the budget is a promise to the user; never emit a photo that breaks it.
            if mask_change > int(self.config.eps):
                raise ProtectionFailedError(f"internal error: change {mask_change} exceeds eps {self.config.eps}")
            if mask_change == 0 and any(p.t_index is not None for p in plans):
                raise ProtectionFailedError("the mask rounded away to nothing; nothing was written")
            failed = [p for p in plans if not p.passed(policy)]
            if failed and policy.on_fail == "drop":
                raise ProtectionFailedError(
                    f"{len(failed)} of {len(plans)} face(s) not protected ({failed[0].failure(policy)}); nothing was "
                    f"written ({failed[0].advice(policy, output)})")
            for plan in failed:
                if policy.on_fail == "blur-face":
                    obscure(current, plan.face.box)
                    plan.action = "obscured"
                else:
                    plan.action = "kept"
            if any(p.action == "obscured" for p in plans):  # the mosaic changed pixels: judge the photo again
                written = self._recheck_after_obscuring(image, current, plans, output)
            if written is None and output is not None:  # lossless: the checked pixels are ``current``; encode once
                written = output.encode(current), current
            pixels = current if written is None else written[1]
            return Result(image=pixels, faces=[p.report(policy) for p in plans],
                          max_abs_change=_max_change(image, pixels, plans), delta=delta,
                          mask_max_abs_change=mask_change, encoded=None if written is None else written[0],
                          output=output)

    @staticmethod
    def _encode_lossy(current: np.ndarray, output: OutputFormat | None) -> tuple[bytes, np.ndarray] | None:
        """(file bytes, the pixels they decode to) for a lossy format; None otherwise (what is written
        decodes to ``current`` itself, so there is nothing to encode until the end)."""
        if output is None or not output.lossy:
            return None
        encoded = output.encode(current)
        return encoded, load_image(encoded)

    def _encode_and_check(self, image: np.ndarray, current: np.ndarray, plans: list["_FacePlan"],
                          output: OutputFormat | None) -> tuple[bytes, np.ndarray] | None:
        """Self-check the pixels that will be written (a lossy format's decoded bytes, else ``current``)."""
        written = self._encode_lossy(current, output)
        self._self_check(image, current if written is None else written[1], plans)
        return written

    def _recheck_after_obscuring(self, image: np.ndarray, current: np.ndarray, plans: list["_FacePlan"],
                                 output: OutputFormat | None) -> tuple[bytes, np.ndarray] | None:
        """After a failing face went under a mosaic, check the faces still reported as cloaked again.

        A mosaic can reach into a neighbouring face's region, and a JPEG block that touches it is
        encoded differently, so a face that passed may no longer pass on what is written: it is
        obscured too, and the photo checked again, until no cloaked face fails (each round obscures
        at least one face, so this ends).
        """
        while True:
            written = self._encode_lossy(current, output)
            cloaked = [p for p in plans if p.action == "cloaked" and p.t_index is not None]
            if not cloaked:
                return written
            self._self_check(image, current if written is None else written[1], cloaked)
            newly_failed = [p for p in cloaked if not p.passed(self.policy)]
            if not newly_failed:
                return written
            for plan in newly_failed:
                obscure(current, plan.face.box)
                plan.action = "obscured"

    def _first_attempt(self, plan: "_FacePlan", image, current, bank: TargetBank, warm, on_step) -> None:
        box = plan.face.box
        side = float(min(box[2] - box[0], box[3] - box[1]))
        if side < self.policy.min_face:
            plan.reason = f"face too small to cloak ({side:.1f} px < --min-face {self.policy.min_face} px)"
            return
        plan.region = self.protector.face_region(plan.face.landmarks, image.shape[:2])
        plan.user = self.protector.embed_face(image, plan.region)
        targets = bank.excluding_lookalikes(plan.user)
        if targets.size == 0:
            plan.reason = "every target identity looks like this face; pass other --target photos"
            return
        steps = int(self.config.steps)
        previous_target = self._warm_region(current, image, plan.face, warm) if warm is not None else None
        if previous_target is not None and previous_target in targets.identities:
            targets = targets.select([targets.identities.index(previous_target)])  # same target: no flicker
            steps, plan.warm_started = warm.steps, True
        elif self.profile is not None and self.profile.is_owner(plan.user):
            # the owner's face: start from one of their enrolled masks (drawn from the face's own
            # pixels, so photos differ), towards its target, and refine briefly
            x0, y0, x1, y1 = plan.region.box
            pick = self.profile.pick(targets.identities, self.config.seed, image[y0:y1, x0:x1].tobytes())
            if pick is not None:
                start = image[y0:y1, x0:x1].astype(np.float32) + self.profile.region_start(pick, plan.face.landmarks,
                                                                                           plan.region.box)
                current[y0:y1, x0:x1] = np.clip(np.round(start), 0, 255).astype(np.uint8)
                targets = targets.select([targets.identities.index(self.profile.targets[pick])])
                steps, plan.profile_started = self.profile_steps, True
        self._run(plan, image, current, targets, steps, on_step)

    def _run(self, plan: "_FacePlan", image, current, targets: TargetBank, steps: int, on_step) -> None:
        """One TIP-IM pass on a face, from where ``current`` stands; writes its region into ``current``."""
        done = self.protector.protect_face(image, current, plan.region, targets, on_step=on_step, steps=steps)
        done.paste_into(current)
        plan.targets, plan.t_index = targets, done.target_index
        plan.steps += done.steps  # the steps actually run (an early stop may end a pass sooner)
        plan.last_steps = steps

    def _warm_region(self, current: np.ndarray, image: np.ndarray, face, warm: WarmStart) -> str | None:
        """Move the previous frame's mask of the same face onto this one; its target, or None."""
        match = max(warm.faces, key=lambda f: box_iou(f[0], face.box), default=None)
        if match is None or box_iou(match[0], face.box) <= 0.5:
            return None
        prev_box, target = match
        shift = np.float32([[1, 0, (face.box[0] + face.box[2] - prev_box[0] - prev_box[2]) / 2],
                            [0, 1, (face.box[1] + face.box[3] - prev_box[1] - prev_box[3]) / 2]])
        h, w = image.shape[:2]
        moved = cv2.warpAffine(warm.delta.astype(np.float32), shift, (w, h), flags=cv2.INTER_NEAREST)
        x0, y0, x1, y1 = grown_box(face.box, image.shape, margin=0.5)
        eps = float(np.floor(self.config.eps))
        start = image[y0:y1, x0:x1].astype(np.float32) + np.clip(moved[y0:y1, x0:x1], -eps, eps)
        current[y0:y1, x0:x1] = np.clip(start, 0, 255).astype(np.uint8)
        return target

    def _self_check(self, image: np.ndarray, out: np.ndarray, plans: list["_FacePlan"]) -> None:
        """Score the protected photo as a recognizer downstream would: detect again, align, embed."""
        found = self.detector.detect(out)
        for plan in plans:
            if plan.t_index is None:
                continue
            face = plan.face
            match = max(found, key=lambda f: box_iou(f.box, face.box), default=None)
            plan.redetected = match is not None and box_iou(match.box, face.box) > 0.3
            # the face as the detector finds it now (a new geometry), or where it was
            after = self.protector.embed_face(out, match.landmarks if plan.redetected else plan.region)
            sims, margins = {}, []
            for sid in self.protector.surrogate_ids:
                t = plan.targets.embeddings[sid][plan.t_index]
                sims[sid] = {
                    "original_after": float(after[sid][0] @ plan.user[sid][0]),
                    "target_before": float(plan.user[sid][0] @ t),
                    "target_after": float(after[sid][0] @ t),
                }
                margins.append(sims[sid]["target_after"] - sims[sid]["original_after"])
            plan.similarity, plan.margin = sims, float(np.mean(margins))

    def protect_file(
        self,
        source: str | os.PathLike[str],
        destination: str | os.PathLike[str],
        jpeg_quality: int | None = None,
        on_step: Callable[[int], None] | None = None,
        overwrite: bool = False,
    ) -> Result:
        """Protect one photo file into ``destination`` (atomic; PNG unless it ends in .jpg/.jpeg; its
        folder is created when missing).

        The self-check runs on the decoded bytes that are written (see ``protect``'s ``output``).
        The original is never modified: a destination that is the source itself is refused, even
        with ``overwrite``. An existing ``destination`` is refused unless ``overwrite`` (checked
        before any work, and again, race-free, when the file is put in place).

        Example:
            >>> cloaker.protect_file("me.jpg", "out/me.jpg", jpeg_quality=90).max_abs_change   # doctest: +SKIP
            19
        """
        source, destination = Path(source), Path(destination)
        output = OutputFormat.for_path(destination, jpeg_quality)
        if destination.exists() and source.exists() and os.path.samefile(source, destination):
            raise OutputError(f"{destination}: refusing to overwrite the original photo; choose another output")
        if not overwrite and (destination.exists() or destination.is_symlink()):
            raise OutputError(f"{destination}: already exists; pass --overwrite to replace it or choose another output")
        try:  # made (or refused) now, not after the cloaking
            destination.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{destination}: cannot create the folder {destination.parent} "
                              f"({exc.strerror or exc})") from exc
        image = load_image(source)
        try:
            result = self.protect(image, on_step=on_step, output=output)
        except NoFaceError:
            raise NoFaceError(str(source)) from None
        write_bytes_atomic(destination, result.encoded, overwrite=overwrite)
        return result


def _max_change(image: np.ndarray, written: np.ndarray, plans: list["_FacePlan"]) -> int:
    """Largest |written - original| outside obscured faces (the mosaic is meant to change pixels)."""
    diff = np.abs(written.astype(np.int16) - image.astype(np.int16))
    for plan in plans:
        if plan.action == "obscured":
            x0, y0, x1, y1 = grown_box(plan.face.box, image.shape, margin=0.2)
            diff[y0:y1, x0:x1] = 0
    return int(diff.max())
