"""Face-level protection on the runtime: a bundle + a backend -> protected face regions.

The SDK's ``Cloaker`` drives one of two face protectors with the same interface: this one (torch-
free, runs a bundle on any backend) or the torch reference (``edgecloak.export.reference.protector``).
A protector knows the detector, the target bank, the settings, and how to embed and protect a face.

Example:
    >>> protector = RuntimeProtector.from_bundle("bundles/edge", backend="auto")   # doctest: +SKIP
    >>> protector.backend_description                                              # doctest: +SKIP
    'onnxruntime 1.23.2 [CPUExecutionProvider] (auto; skipped tensorrt: ...)'
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgecloak.errors import ModelError

from .backends import select_backend
from .bundle import Bundle
from .config import TIPIMConfig
from .detect.mtcnn import MTCNNDetector
from .face_region import FaceRegion
from .image_io import load_image
from .targets import TargetBank
from .tipim import RuntimeResult, RuntimeTIPIM, face_sampler


class RuntimeProtector:
    """Protects faces with a bundle's graphs on one backend (not thread-safe; the Cloaker locks)."""

    def __init__(self, bundle: Bundle, engines, backend_description: str, config: TIPIMConfig | None = None):
        self.bundle = bundle
        self.engines = list(engines)
        self.backend_description = backend_description
        self.config = config or bundle.preset
        self.detector = MTCNNDetector.from_dir(bundle.detector_dir)
        self.targets: TargetBank = bundle.targets
        self.geometries = dict(bundle.geometries)
        self.last_result: RuntimeResult | None = None

    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str] | Bundle, backend: str = "auto", **settings) -> "RuntimeProtector":
        """Load (and verify) a bundle, start its surrogates on ``backend``; ``settings`` override the preset."""
        bundle = path if isinstance(path, Bundle) else Bundle.load(path)
        try:
            chosen, description = select_backend(backend)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(str(exc)) from exc
        engines = [chosen.load(files) for files in bundle.surrogates]
        lowered = {k: v for k, v in bundle.precisions.items() if v != "fp32"}
        if lowered:
            description += " [gradient graphs: " + ", ".join(f"{k} {v}" for k, v in lowered.items()) + "]"
        config = replace(bundle.preset, **settings) if settings else bundle.preset
        return cls(bundle, engines, description, config)

    @property
    def surrogate_ids(self) -> list[str]:
        return [e.id for e in self.engines]

    def _face(self, landmarks: np.ndarray, image_hw: tuple[int, int]) -> FaceRegion:
        return FaceRegion.around(landmarks, image_hw, self.geometries)

    def embed_face(self, image: np.ndarray, landmarks: np.ndarray) -> dict[str, np.ndarray]:
        """Unit embeddings {id: [1,D]} of one face of an RGB uint8 image."""
        face = self._face(landmarks, image.shape[:2])
        x0, y0, x1, y1 = face.box
        region = np.ascontiguousarray(image[y0:y1, x0:x1].transpose(2, 0, 1)[None], dtype=np.float32)
        out = {}
        for e in self.engines:
            sampler = face_sampler(face, e.id, e.files.input_size, None)
            out[e.id] = e.embed(sampler.forward(region)).copy()
        return out

    def targets_from_photos(self, photos: Sequence[str | os.PathLike[str]]) -> TargetBank:
        """User-chosen targets: the largest face of each photo is one identity (named by file stem)."""
        names, rows = [], {e.id: [] for e in self.engines}
        for photo in photos:
            image = load_image(photo)
            face = self.detector.largest_face(image, str(photo))
            for sid, emb in self.embed_face(image, face.landmarks).items():
                rows[sid].append(emb[0])
            names.append(Path(photo).stem)
        return TargetBank(names, {sid: np.stack(v).astype(np.float32) for sid, v in rows.items()})

    def protect_face(
        self,
        original: np.ndarray,
        current: np.ndarray,
        landmarks: np.ndarray,
        targets: TargetBank,
        on_step: Callable[[int], None] | None = None,
        steps: int | None = None,
    ) -> tuple[tuple[int, int, int, int], np.ndarray, int]:
        """Protect one face: (box, protected region HxWx3 uint8, index of the target in ``targets``).

        ``original`` is the unprotected photo (the budget is around it), ``current`` the photo with
        earlier faces already protected, or a warm start (where this face's loop starts).
        ``steps`` overrides the iteration count for this face (retries, warm-started video frames).
        """
        face = self._face(landmarks, original.shape[:2])
        x0, y0, x1, y1 = face.box

        def region(img: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(img[y0:y1, x0:x1].transpose(2, 0, 1)[None], dtype=np.float32)

        loop = RuntimeTIPIM(self.engines, self.config if steps is None else replace(self.config, steps=steps))
        k = min(targets.size, loop.max_targets)
        result = loop.run(region(original), face, targets.select(range(k)), start=region(current), on_step=on_step)
        self.last_result = result
        return face.box, result.region[0].transpose(1, 2, 0).astype(np.uint8), result.target_index

    def close(self) -> None:
        for e in self.engines:
            e.close()
