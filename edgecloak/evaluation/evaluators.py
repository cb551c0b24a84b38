"""The recognizers that score protection, with detection and an on-disk embedding cache.

An evaluator sees a photo the way a face-search system would: detect faces (MTCNN), align the
face with its own crop geometry, embed. Which face: the largest for gallery photos; for a probe,
the detection that overlaps the original face box best. When the protected face is no longer
detected, the original landmarks are used (an attacker who knows where the face is can still crop
it), so protection is never credited to a detector miss; the re-detection rate is reported apart.

Every detection and embedding is cached under ``cache_dir`` by the sha256 of the pixels (and, for
embeddings, the landmarks and the model's manifest), so an interrupted or repeated evaluation
resumes without recomputing.

Example:
    >>> ev = Evaluators(["mobileface", "faceres-deep"], Path("/tmp/cache"))     # doctest: +SKIP
    >>> vectors, redetected = ev.embed(image, near_box=face.box)               # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgecloak.export.recognizers import Recognizer
from edgecloak.export.reference.targets import embed_face as embed_with_recognizers
from edgecloak.export.zoo.registry import ensure_detector, ensure_recognizer
from edgecloak.runtime.atomic import write_bytes_atomic
from edgecloak.runtime.detect.mtcnn import MTCNNDetector
from edgecloak.runtime.face_region import box_iou as iou

# Bump when what is cached changes meaning (alignment, detector post-processing, ...).
CACHE_VERSION = 1


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # x0, y0, x1, y1
    landmarks: np.ndarray  # 5 x 2
    score: float

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


def image_digest(image: np.ndarray) -> str:
    """sha256 of the pixels and their shape (what the cache is keyed by)."""
    h = hashlib.sha256(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(path, buffer.getvalue())


def _manifest_tag(model_dir: Path) -> str:
    manifest = model_dir / "manifest.json"
    blob = manifest.read_bytes() if manifest.exists() else str(model_dir).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


class Evaluators:
    """A set of recognizers (torch, from the zoo) + the MTCNN detector, cached on disk."""

    def __init__(self, ids: Sequence[str], cache_dir: Path):
        self.ids = list(ids)
        self.cache_dir = Path(cache_dir)
        self.recognizers = [Recognizer.load(i) for i in self.ids]
        detector_dir = ensure_detector()
        self.detector = MTCNNDetector.from_dir(detector_dir)
        self.detector_tag = f"v{CACHE_VERSION}-{_manifest_tag(detector_dir)}"
        self.tags = {i: f"v{CACHE_VERSION}-{_manifest_tag(ensure_recognizer(i))}" for i in self.ids}
        self.computed = 0  # embeddings computed (not read from the cache) since construction

    # -- detection ----------------------------------------------------------------------------
    def faces(self, image: np.ndarray, digest: str | None = None) -> list[Face]:
        """All faces MTCNN finds in the image (cached)."""
        digest = digest or image_digest(image)
        path = self.cache_dir / "faces" / self.detector_tag / f"{digest}.npy"
        if path.exists():
            rows = np.load(path)
        else:
            found = self.detector.detect(image)
            rows = np.array([[*f.box[:4], *np.asarray(f.landmarks).ravel(), f.score] for f in found],
                            dtype=np.float64).reshape(-1, 15)
            _save_atomic(path, rows)
        return [Face(r[:4], r[4:14].reshape(5, 2), float(r[14])) for r in rows]

    def pick(self, image: np.ndarray, near_box: Sequence[float] | None, digest: str | None = None) -> Face | None:
        """The largest face, or the one that overlaps ``near_box`` best (IoU > 0.3); None if absent."""
        found = self.faces(image, digest)
        if near_box is None:
            return max(found, key=lambda f: f.area, default=None)
        best = max(found, key=lambda f: iou(f.box, near_box), default=None)
        return best if best is not None and iou(best.box, near_box) > 0.3 else None

    # -- embedding ----------------------------------------------------------------------------
    def embed_face(self, image: np.ndarray, landmarks: np.ndarray, digest: str | None = None) -> dict[str, np.ndarray]:
        """Unit embeddings {evaluator id: [D]} of the face at ``landmarks`` (cached per evaluator)."""
        digest = digest or image_digest(image)
        lm_key = hashlib.sha256(np.round(np.asarray(landmarks, np.float64), 3).tobytes()).hexdigest()[:16]
        out, missing = {}, []
        for rec in self.recognizers:
            path = self.cache_dir / "embeddings" / f"{rec.id}-{self.tags[rec.id]}" / digest[:2] / f"{digest}-{lm_key}.npy"
            if path.exists():
                out[rec.id] = np.load(path)
            else:
                missing.append((rec, path))
        if missing:
            fresh = embed_with_recognizers(image, np.asarray(landmarks, np.float32), [r for r, _ in missing])
            for rec, path in missing:
                vec = fresh[rec.id][0].numpy().astype(np.float32)
                _save_atomic(path, vec)
                out[rec.id] = vec
                self.computed += 1
        return out

    def embed(self, image: np.ndarray, near_box: Sequence[float] | None = None,
              fallback_landmarks: np.ndarray | None = None) -> tuple[dict[str, np.ndarray] | None, bool]:
        """(embeddings of the chosen face, whether it was detected); (None, False) if there is no face
        and no fallback."""
        digest = image_digest(image)
        face = self.pick(image, near_box, digest)
        if face is not None:
            return self.embed_face(image, face.landmarks, digest), True
        if fallback_landmarks is None:
            return None, False
        return self.embed_face(image, fallback_landmarks, digest), False
