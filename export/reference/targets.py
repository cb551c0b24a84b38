"""Target identities for TIP-IM: K faces of people who are not the user, embedded per surrogate.

The default set is built from the one-photo identities that ship in registry packages (see
``edgecloak.export.zoo.photos``): the six faces of insightface's group photo, Tom Hanks, Grace
Hopper, Eileen Collins and the cameraman: 10 identities, the paper's K. Users may pass their own
target photos instead. Targets that look like the user (a surrogate similarity above
``LOOKALIKE_COSINE``) are dropped, so a user is never "protected" towards themself.

The faces are embedded with the torch recognizers (bundle export, evaluators, the oracle's tests):
``embed_face`` / ``embed_faces`` return torch tensors, every ``TargetBank`` built here holds float32
numpy arrays, as every bank does.

Example:
    >>> bank = default_target_bank(recognizers, detector)   # doctest: +SKIP
    >>> bank.size, bank.identities[0]                        # doctest: +SKIP
    (10, 't1-face0')
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgecloak.export.recognizers import Recognizer
from edgecloak.export.zoo.photos import OnePhotoSource, one_photo_identities
from edgecloak.runtime.align import ARCFACE_TEMPLATE_112, CropGeometry
from edgecloak.runtime.image_io import load_image
from edgecloak.runtime.targets import LOOKALIKE_COSINE, TargetBank  # noqa: F401  (re-exported)

from .view import FaceView


def geometries_of(recognizers: Sequence[Recognizer]) -> dict[str, CropGeometry]:
    """Each recognizer's crop geometry, from its spec."""
    return {r.id: CropGeometry(r.spec.input_size, r.spec.crop_scale) for r in recognizers}


def embed_face(image: np.ndarray, landmarks: np.ndarray, recognizers: Sequence[Recognizer]) -> dict[str, torch.Tensor]:
    """Unit embeddings {id: [1,D]} of one face, through the same view the attack uses."""
    return embed_faces([(image, landmarks)], recognizers)


@torch.no_grad()
def embed_faces(
    faces: Sequence[tuple[np.ndarray, np.ndarray]], recognizers: Sequence[Recognizer], batch: int = 32
) -> dict[str, torch.Tensor]:
    """Unit embeddings {id: [N,D]} of many (image, landmarks) faces, run through the nets in batches."""
    geometries = geometries_of(recognizers)
    crops: dict[str, list[torch.Tensor]] = {r.id: [] for r in recognizers}
    for image, landmarks in faces:
        view = FaceView.around(landmarks, image.shape[:2], geometries)
        x0, y0, x1, y1 = view.box
        region = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
        for name, crop in view.crops(region).items():
            crops[name].append(crop)
    out = {}
    for r in recognizers:
        stacked = torch.cat(crops[r.id])
        out[r.id] = torch.cat([r(stacked[i : i + batch]) for i in range(0, len(stacked), batch)])
    return out


def one_photo_faces(detector, sources: Sequence[OnePhotoSource]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(identity, image, landmarks) of every face of the one-photo sources (group photos left to right)."""
    out: list[tuple[str, np.ndarray, np.ndarray]] = []
    for src in sources:
        image = load_image(src.path)
        if src.aligned_112:
            landmarks_list = [ARCFACE_TEMPLATE_112 * (image.shape[1] / 112.0)]
        else:
            # MTCNN may also report non-faces (a fist in t1.jpg): keep the most confident ones
            found = sorted(detector.detect(image), key=lambda f: -f.score)[: len(src.identities)]
            landmarks_list = [f.landmarks for f in sorted(found, key=lambda f: float(f.box[0]))]
        out += [(name, image, lm) for name, lm in zip(src.identities, landmarks_list)]
    return out


def _bank(identities: list[str], embeddings: dict[str, torch.Tensor]) -> TargetBank:
    """A bank of the torch embeddings, as numpy (computed under no_grad, so no copy is needed)."""
    return TargetBank(identities, {k: v.cpu().numpy() for k, v in embeddings.items()})


def target_bank_from_sources(
    recognizers: Sequence[Recognizer], detector, sources: Sequence[OnePhotoSource]
) -> TargetBank:
    """Embed every identity of the given one-photo sources (faces of a group photo left to right)."""
    faces = one_photo_faces(detector, sources)
    return _bank([n for n, _, _ in faces], embed_faces([(im, lm) for _, im, lm in faces], recognizers))


def default_target_bank(recognizers: Sequence[Recognizer], detector) -> TargetBank:
    """The shipped one-photo identities as targets (10 identities)."""
    return target_bank_from_sources(recognizers, detector, one_photo_identities())


def target_bank_from_photos(recognizers: Sequence[Recognizer], detector, photos: Sequence[Path]) -> TargetBank:
    """User-chosen targets: the largest face of each photo is one identity (named by file stem)."""
    faces: list[tuple[np.ndarray, np.ndarray]] = []
    for photo in photos:
        image = load_image(photo)
        face = detector.largest_face(image, str(photo))
        faces.append((image, face.landmarks))
    return _bank([Path(p).stem for p in photos], embed_faces(faces, recognizers))
