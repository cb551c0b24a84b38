"""Face-level protection on the runtime: a bundle + a backend -> protected face regions.

The SDK's ``Cloaker`` drives this protector: it knows the detector, the target bank, the settings,
and how to embed and protect one face. The seam is typed: a face's geometry is a ``FaceRegion``
(built once per face by ``face_region`` and reused for its embedding and every pass), and a pass
returns a ``FaceResult``.

Example:
    >>> protector = RuntimeProtector.from_bundle("bundles/edge", backend="auto")   # doctest: +SKIP
    >>> protector.backend_description                                              # doctest: +SKIP
    'onnxruntime 1.23.2 [CPUExecutionProvider] (auto; skipped tensorrt: ...)'
    >>> face = protector.face_region(landmarks, image.shape[:2])                   # doctest: +SKIP
    >>> protector.protect_face(image, image, face, targets).steps                  # doctest: +SKIP
    16
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
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
from .tipim import RuntimeTIPIM, face_sampler


@dataclass
class FaceResult:
    """One TIP-IM pass on one face: where, the protected pixels, the target, and what it cost.

    ``region`` is the protected photo region ``box`` (HxWx3 uint8, within floor(eps) of the
    original on every pixel); ``target_index`` indexes the targets the pass was given; ``steps`` is
    the number of iterations run (an early stop, ``TIPIMConfig.stop_margin``, may end a pass
    sooner than asked); ``gains`` the loop's gain per step; ``seconds`` its time per phase.
    """

    box: tuple[int, int, int, int]
    region: np.ndarray
    target_index: int
    steps: int
    gains: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def paste_into(self, image: np.ndarray) -> None:
        """Write the protected region into ``image`` (HxWx3 uint8) in place."""
        x0, y0, x1, y1 = self.box
        image[y0:y1, x0:x1] = self.region


def _region_batch(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The photo region ``box`` as the loop's float32 batch [1,3,h,w]."""
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1].transpose(2, 0, 1)[None], dtype=np.float32)


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

    @classmethod
    def from_bundle(cls, path: str | os.PathLike[str] | Bundle, backend: str = "auto",
                    config: TIPIMConfig | None = None, held_graphs: bool = True, **settings) -> "RuntimeProtector":
        """Load (and verify) a bundle, start its surrogates on ``backend``.

        ``config``: the loop's settings (default: the bundle's preset); ``settings``: ``TIPIMConfig``
        fields replaced on it (a convenience for scripts). ``held_graphs=False`` leaves the bundle's
        single-target gradient graphs unused (every step runs the K graph, as bundles without them
        do): the same protection, slower; for benchmarks.
        """
        bundle = path if isinstance(path, Bundle) else Bundle.load(path)
        try:
            chosen, description = select_backend(backend)
        except (RuntimeError, ValueError) as exc:
            raise ModelError(str(exc)) from exc
        files = bundle.surrogates if held_graphs else [replace(f, held_grad_graph=None) for f in bundle.surrogates]
        engines = [chosen.load(f) for f in files]
        lowered = {k: v for k, v in bundle.precisions.items() if v != "fp32"}
        if lowered:
            description += " [gradient graphs: " + ", ".join(f"{k} {v}" for k, v in lowered.items()) + "]"
        config = config or bundle.preset
        return cls(bundle, engines, description, replace(config, **settings) if settings else config)

    @property
    def surrogate_ids(self) -> list[str]:
        return [e.id for e in self.engines]

    def face_region(self, landmarks: np.ndarray, image_hw: tuple[int, int]) -> FaceRegion:
        """The photo region every surrogate's aligned crop of this face covers (its geometry)."""
        return FaceRegion.around(landmarks, image_hw, self.geometries)

    def embed_face(self, image: np.ndarray, face: FaceRegion | np.ndarray) -> dict[str, np.ndarray]:
        """Unit embeddings {id: [1,D]} of one face of an RGB uint8 image (its region, or its landmarks)."""
        if not isinstance(face, FaceRegion):
            face = self.face_region(face, image.shape[:2])
        region = _region_batch(image, face.box)
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
        face: FaceRegion | np.ndarray,
        targets: TargetBank,
        on_step: Callable[[int], None] | None = None,
        steps: int | None = None,
    ) -> FaceResult:
        """One TIP-IM pass on one face (its ``FaceRegion``, or its landmarks).

        ``original`` is the unprotected photo (the budget is around it), ``current`` the photo with
        earlier faces already protected, or a warm start (where this face's loop starts). At most
        the graphs' K of ``targets`` are chased (the first ones). ``steps`` overrides the iteration
        count for this pass (retries, warm-started video frames); 0 keeps ``current``'s start as it
        is, projected into the budget (a cloak profile's mask without refinement).
        """
        if not isinstance(face, FaceRegion):
            face = self.face_region(face, original.shape[:2])
        loop = RuntimeTIPIM(self.engines, self.config if not steps else replace(self.config, steps=steps))
        chased = targets.select(range(min(targets.size, loop.max_targets)))
        region, start = _region_batch(original, face.box), _region_batch(current, face.box)
        if steps == 0:  # the start as it is (a cloak profile's mask), within the budget
            result = loop.settle(region, face, chased, start)
        else:
            result = loop.run(region, face, chased, start=start, on_step=on_step)
        protected = result.region[0].transpose(1, 2, 0).astype(np.uint8)
        return FaceResult(box=tuple(int(v) for v in face.box), region=protected, target_index=result.target_index,
                          steps=len(result.gains), gains=result.gains, seconds=result.seconds)

    def close(self) -> None:
        for e in self.engines:
            e.close()
