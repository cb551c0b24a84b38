"""Shared fixtures: real models and real photos, fetched once into $EDGECLOAK_HOME and reused.

Models are fetched and converted on first use (cached between tests and sessions); CI points
EDGECLOAK_HOME at a fresh folder so the fetch itself is exercised on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass
class PhotoFace:
    """One photo of the 5-identity set with its largest detected face."""

    identity: str
    path: Path
    image: np.ndarray
    face: object  # DetectedFace, or None when the detector missed it


@pytest.fixture(scope="session")
def detector():
    from edgecloak.export.zoo.registry import ensure_detector
    from edgecloak.runtime.detect.mtcnn import MTCNNDetector

    return MTCNNDetector.from_dir(ensure_detector())


@pytest.fixture(scope="session")
def recognizer():
    """Factory: recognizer(id) -> Recognizer, loaded once per session."""
    from edgecloak.export.recognizers import Recognizer

    loaded: dict = {}

    def get(model_id: str):
        if model_id not in loaded:
            loaded[model_id] = Recognizer.load(model_id)
        return loaded[model_id]

    return get


@pytest.fixture(scope="session")
def celeb_faces(detector) -> list[PhotoFace]:
    """All 118 photos of the 5 identities, each with its largest detected face (detected once)."""
    from edgecloak.export.zoo.photos import identity_photos
    from edgecloak.runtime.image_io import load_image

    out = []
    for identity, paths in identity_photos().items():
        for path in paths:
            image = load_image(path)
            faces = detector.detect(image)
            face = max(faces, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])), default=None)
            out.append(PhotoFace(identity, path, image, face))
    return out
