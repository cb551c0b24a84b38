"""The SDK: ``Cloaker`` protects every face of a photo with TIP-IM masks.

How a photo travels: safe decode (EXIF orientation applied, metadata dropped) -> MTCNN faces with
5 landmarks -> for each face, TIP-IM optimises the photo pixels of the face region as seen through
each surrogate's alignment -> uint8 result within +-eps of the original on every pixel -> self-check
(fail closed) -> atomic write of a metadata-free file. The surrogates run in the torch-free runtime
on a cloak bundle (``edgecloak.runtime.protector``), or in the torch reference
(``edgecloak.export.reference.protector``, ``backend="reference"``): same interface, same results.

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

import numpy as np

from edgecloak.errors import NoFaceError, OutputError, ProtectionFailedError, UsageError
from edgecloak.runtime.image_io import load_image, save_image_atomic
from edgecloak.runtime.targets import TargetBank


@dataclass
class FaceReport:
    """One protected face: where it is, which target it was pushed to, and how far it moved.

    ``similarity`` maps surrogate id to cosine similarities measured by re-detecting the face in the
    protected image (as a recognizer downstream would):
    ``{"original_after": cos(protected, unprotected face), "target_before": ..., "target_after": ...}``.
    """

    box: tuple[float, float, float, float]
    landmarks: list[list[float]]
    target: str
    similarity: dict[str, dict[str, float]] = field(default_factory=dict)
    redetected: bool = True


@dataclass
class Result:
    """The protected photo (HxWx3 uint8 RGB) and one report per face."""

    image: np.ndarray
    faces: list[FaceReport]
    max_abs_change: int

    @property
    def protected(self) -> bool:
        return bool(self.faces)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class Cloaker:
    """Protects photos; drives a face protector (runtime on a bundle, or the torch reference).

    Not re-entrant: one ``protect`` runs at a time per instance (an internal lock serialises calls
    from several threads); make one Cloaker per worker to run in parallel.
    """

    def __init__(self, protector, targets=None):
        self.protector = protector
        self.detector = protector.detector
        self.targets = targets if targets is not None else protector.targets
        self.config = protector.config
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        """What runs the surrogates, in words (for logs and reports)."""
        return self.protector.backend_description

    @classmethod
    def load(
        cls,
        bundle: str | os.PathLike[str] | None = None,
        backend: str = "auto",
        preset: str = "paper",
        surrogates: Sequence[str] | None = None,
        target_photos: Sequence[str | os.PathLike[str]] = (),
        num_targets: int | None = None,
        **settings,
    ) -> "Cloaker":
        """A cloaker on the torch-free runtime (``bundle``) or on the torch reference.

        ``bundle``: a folder written by ``edgecloak export``. Without one, ``preset`` (``paper`` or
        ``edge``, see ``edgecloak.calibration.presets``) names the surrogates and settings;
        ``backend="reference"`` then runs the torch reference on the zoo, and any other backend the
        runtime on the preset's bundle (exported into the cache on first use; needs the export
        extra). ``surrogates`` replaces the preset's; ``num_targets`` keeps the first K target
        identities; ``target_photos`` replaces them. ``settings`` are ``TIPIMConfig`` fields (eps,
        steps, alpha, mu, norm, gamma, seed, ...) overriding the bundle's or preset's.

        Example:
            >>> cloaker = Cloaker.load(preset="edge")           # doctest: +SKIP
            >>> cloaker.backend                                  # doctest: +SKIP
            'onnxruntime 1.23.2 [CPUExecutionProvider] (auto; skipped tensorrt: ...)'
        """
        if num_targets is not None and num_targets < 1:
            raise UsageError(f"the number of targets must be >= 1, got {num_targets}")
        from edgecloak.calibration.presets import preset as named_preset

        recipe = named_preset(preset)
        if bundle is None:
            surrogates = list(surrogates) if surrogates else list(recipe.surrogates)
            settings = {**recipe.settings, **settings}
        if backend == "reference":
            if bundle is not None:
                raise UsageError("the reference backend runs the zoo models, not a bundle; drop --bundle")
            from edgecloak.export.reference.protector import ReferenceProtector
            from edgecloak.runtime.config import TIPIMConfig

            protector = ReferenceProtector.load(surrogates, target_photos, num_targets, TIPIMConfig(**settings))
            return cls(protector)
        from edgecloak.runtime.protector import RuntimeProtector

        if bundle is None:
            from edgecloak.export.bundle import default_bundle

            bundle = default_bundle(surrogates, recipe.num_targets)
        elif surrogates:
            raise UsageError("--surrogates is fixed by the bundle; export another bundle to change it")
        protector = RuntimeProtector.from_bundle(bundle, backend, **settings)
        targets = protector.targets_from_photos(target_photos) if target_photos else protector.targets
        if num_targets is not None:
            targets = targets.select(range(min(num_targets, targets.size)))
        return cls(protector, targets)

    def protect(
        self, image: np.ndarray, on_step: Callable[[int], None] | None = None, targets: TargetBank | None = None
    ) -> Result:
        """Protect every detected face of an RGB uint8 image; the input array is not modified.

        ``targets`` replaces this cloaker's target identities for this photo only (same array type as
        the protector's: numpy for the runtime, torch for the reference). Raises ``NoFaceError``
        (with path "image") when no face is found.
        """
        bank = self.targets if targets is None else targets
        with self._lock:
            faces = self.detector.detect(image)
            if not faces:
                raise NoFaceError("image")
            current = image.copy()
            per_face = []
            for face in faces:
                user = self.protector.embed_face(image, face.landmarks)
                targets = bank.excluding_lookalikes(user)
                if targets.size == 0:
                    raise ProtectionFailedError("every target identity looks like this face; pass other --target photos")
                (x0, y0, x1, y1), region, t_index = self.protector.protect_face(
                    image, current, face.landmarks, targets, on_step=on_step
                )
                current[y0:y1, x0:x1] = region
                per_face.append((user, targets, t_index))
            out = current
            max_change = int(np.abs(out.astype(np.int16) - image.astype(np.int16)).max())
            # Fail closed: the budget is a promise to the user; never emit a photo that breaks it.
            if max_change > int(self.config.eps):
                raise ProtectionFailedError(f"internal error: change {max_change} exceeds eps {self.config.eps}")
            if max_change == 0:
                raise ProtectionFailedError("the mask rounded away to nothing; nothing was written")
            reports = self._reports(out, faces, per_face)
        return Result(image=out, faces=reports, max_abs_change=max_change)

    def _reports(self, out, faces, per_face) -> list[FaceReport]:
        """Score the protected photo the way a recognizer downstream would: detect again, align, embed."""
        found = self.detector.detect(out)
        reports = []
        for face, (user, targets, t_index) in zip(faces, per_face):
            match = max(found, key=lambda f: _iou(f.box, face.box), default=None)
            redetected = match is not None and _iou(match.box, face.box) > 0.3
            landmarks = match.landmarks if redetected else face.landmarks
            after = self.protector.embed_face(out, landmarks)
            sims = {}
            for sid in self.protector.surrogate_ids:
                t = targets.embeddings[sid][t_index]
                sims[sid] = {
                    "original_after": float(after[sid][0] @ user[sid][0]),
                    "target_before": float(user[sid][0] @ t),
                    "target_after": float(after[sid][0] @ t),
                }
            reports.append(FaceReport(
                box=tuple(float(v) for v in face.box),
                landmarks=np.asarray(face.landmarks).round(2).tolist(),
                target=targets.identities[t_index],
                similarity=sims,
                redetected=redetected,
            ))
        return reports

    def protect_file(
        self,
        source: str | os.PathLike[str],
        destination: str | os.PathLike[str],
        jpeg_quality: int | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> Result:
        """Protect one photo file into ``destination`` (atomic; PNG unless it ends in .jpg/.jpeg).

        The original is never modified: a destination that is the source itself is refused.
        """
        source, destination = Path(source), Path(destination)
        if destination.exists() and source.exists() and os.path.samefile(source, destination):
            raise OutputError(f"{destination}: refusing to overwrite the original photo; choose another output")
        image = load_image(source)
        try:
            result = self.protect(image, on_step=on_step)
        except NoFaceError:
            raise NoFaceError(str(source)) from None
        save_image_atomic(destination, result.image, jpeg_quality=jpeg_quality)
        return result
