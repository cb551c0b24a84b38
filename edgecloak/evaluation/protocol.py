"""The evaluation protocol: the recognizers that score, the methods compared, and the split into
probes, target-optimisation photos and the gallery, deterministically.

Standard library only (no torch): the CLI builds ``edgecloak eval``'s flags from
``DEFAULT_EVALUATORS`` and ``MAIN_METHODS`` on every start, a device install's included.

The paper's protocol adapted to the shipped photos (``harness.evaluation_photos``): the users are
the 10 identities with enough photos to split, the 5 celebrities (19-27 photos each) and dlib's 5
"johns" (10-11 tight 150x150 face chips each, loaded padded by ``photos.load_face_photo``: a 25%
replicated border, 226x226, so the face and the region grown around it lie inside the image).
Each user's photos are ordered by a hash of their file name (deterministic, and independent of how
the files happen to be named or listed), then cut into

* ``probes``: the first ``probes_per_identity`` photos (the photos that get protected; the
  evaluation takes 4 per user by default, 40 probes, ``split_photos`` alone 2);
* ``optimisation``: the next ``targets_per_identity`` photos (3), used ONLY to compute target
  embeddings when this identity is someone else's target; they are never in any gallery;
* the rest, which are gallery photos. A probe's gallery is every non-optimisation photo except the
  probe itself, so the user's other photos (including other probes) are there to be found.

Gallery-only identities are not split (never probed, never targets): the evaluation adds them to
every gallery. Always the 10 faces of the one-photo identities; unless ``--no-distractors``, also
612 more faces: 3 photos of Barack Obama (too few for probes, targets and a gallery photo) and
609 one-photo portraits.

Example:
    >>> split = split_photos({"a": [Path(f"a{i}.jpg") for i in range(8)]}, 2, 3)
    >>> len(split.probes["a"]), len(split.optimisation["a"]), len(split.gallery_for(split.probes["a"][0]))
    (2, 3, 4)

Recognizer families (``FAMILIES``): models of one lineage (architecture and training recipe) transfer
to each other far better than across lineages, so "black-box" on a sibling of a surrogate is a
weaker claim than black-box on another family. Leave-one-family-out (``harness.cross_family_methods``)
optimises on the surrogates outside a family and scores on that family's members only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

# the recognizers that score every method by default (white-box where a method optimised on them)
DEFAULT_EVALUATORS = ("mobileface", "faceres", "facenet-casia", "faceres-deep", "facenet-keras")
# the compared methods run by default: names in ``harness.method_catalogue``
MAIN_METHODS = ("none", "noise", "blur", "mifgsm", "tipim-published", "edge", "paper", "balanced")
# recognizer families (family name -> recognizer ids): faceres-deep is faceres's deeper sibling,
# facenet-keras another FaceNet next to facenet-casia, mobileface stands alone
FAMILIES: dict[str, tuple[str, ...]] = {
    "mobileface": ("mobileface",),
    "faceres": ("faceres", "faceres-deep"),
    "facenet": ("facenet-casia", "facenet-keras"),
}


def family_of(recognizer_id: str) -> str:
    """The family (a key of ``FAMILIES``) a recognizer belongs to; ``ValueError`` for an unknown id.

    Example:
        >>> family_of("faceres-deep"), family_of("facenet-casia"), family_of("mobileface")
        ('faceres', 'facenet', 'mobileface')
        >>> family_of("arcface")
        Traceback (most recent call last):
        ...
        ValueError: recognizer 'arcface' is in no family; known: mobileface, faceres, faceres-deep, facenet-casia, facenet-keras
    """
    for family, members in FAMILIES.items():
        if recognizer_id in members:
            return family
    known = ", ".join(m for members in FAMILIES.values() for m in members)
    raise ValueError(f"recognizer {recognizer_id!r} is in no family; known: {known}")


def families_left_out(surrogates: Sequence[str], evaluators: Sequence[str] | None = None
                      ) -> dict[str, tuple[str, ...] | str]:
    """Leave-one-family-out for an ensemble: per family F (``FAMILIES`` order), the surrogates outside
    F, or, where F cannot be judged, why (a string): no surrogate remains without F, or none of F's
    members is among ``evaluators`` (nothing would score it; None: every recognizer scores).

    The one rule both ``edgecloak eval --cross-family`` and the presets' calibration follow.

    Example:
        >>> families_left_out(("mobileface", "faceres"))
        {'mobileface': ('faceres',), 'faceres': ('mobileface',), 'facenet': ('mobileface', 'faceres')}
        >>> families_left_out(("mobileface",), evaluators=("mobileface", "faceres"))["mobileface"]
        'every surrogate (mobileface) is in the mobileface family'
    """
    out: dict[str, tuple[str, ...] | str] = {}
    for family, members in FAMILIES.items():
        remaining = tuple(s for s in surrogates if s not in members)
        if not remaining:
            out[family] = f"every surrogate ({'+'.join(surrogates)}) is in the {family} family"
        elif evaluators is not None and not any(e in members for e in evaluators):
            out[family] = f"no evaluator of the {family} family ({', '.join(members)}) in this run"
        else:
            out[family] = remaining
    return out


def _order_key(path: Path) -> str:
    return hashlib.sha256(Path(path).name.encode()).hexdigest()


@dataclass(frozen=True)
class Split:
    """Per identity: probe photos, target-optimisation photos, and all its photos."""

    probes: dict[str, list[Path]]
    optimisation: dict[str, list[Path]]
    photos: dict[str, list[Path]]

    def gallery_for(self, probe: Path) -> list[tuple[str, Path]]:
        """(identity, photo) pairs of the gallery a given probe is searched against."""
        held_out = {p for paths in self.optimisation.values() for p in paths}
        return [(name, p) for name, paths in sorted(self.photos.items()) for p in paths
                if p != probe and p not in held_out]


def enrolment_photos(split: Split) -> dict[str, list[Path]]:
    """What a method may learn each user from (its targets' embeddings, a user's cloak profile): the
    split's optimisation photos. A probe among them would score a method on a photo it learned from,
    so that is refused (``ValueError``).

    Example:
        >>> s = Split({"u": [Path("a.jpg")]}, {"u": [Path("b.jpg")]}, {})
        >>> enrolment_photos(s)
        {'u': [PosixPath('b.jpg')]}
        >>> enrolment_photos(Split({"u": [Path("a.jpg")]}, {"v": [Path("a.jpg")]}, {}))
        Traceback (most recent call last):
        ...
        ValueError: a.jpg is a probe and may not be learned from
    """
    probes = {p for paths in split.probes.values() for p in paths}
    for paths in split.optimisation.values():
        for p in paths:
            if p in probes:
                raise ValueError(f"{p} is a probe and may not be learned from")
    return split.optimisation


def split_photos(
    photos: Mapping[str, Sequence[Path]], probes_per_identity: int = 2, targets_per_identity: int = 3
) -> Split:
    """Split every identity's photos (see the module notes); identities with too few photos are refused."""
    need = probes_per_identity + targets_per_identity + 1  # at least one gallery photo besides the probes
    probes, optimisation, ordered = {}, {}, {}
    for name, paths in sorted(photos.items()):
        if len(paths) < need:
            raise ValueError(f"{name}: {len(paths)} photos, the split needs at least {need}")
        order = sorted((Path(p) for p in paths), key=_order_key)
        probes[name] = order[:probes_per_identity]
        optimisation[name] = order[probes_per_identity:probes_per_identity + targets_per_identity]
        ordered[name] = order
    return Split(probes, optimisation, ordered)
