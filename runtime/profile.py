"""Per-user cloak profiles: a user's identity masks, computed once, started from on every photo.

A device mostly protects its owner. Enrolment (``edgecloak.enrolment``) runs the full TIP-IM loop
over several photos of the user, each one starting from the mask the previous ones left, and keeps
the result as a **universal identity mask** in a canonical face frame (``CANONICAL``: the aligned
face at 224 px, zoomed out to cover the whole region the loop may change); it does so for a few
distinct targets, one mask each. At protect time a face that matches the profile's owner starts
from one of those masks (drawn per photo), warped onto it by its landmarks, and runs a short
refinement towards that mask's target (N may be 0); every other face gets the normal loop.
The budget, the self-check and the fail-closed rules are the same either way.

What a profile holds, and nothing else:

* the masks (int8, |value| <= floor(eps)) and the target identity each was optimised towards;
* the owner's **biometric template**: per surrogate, the mean unit embedding of the enrolment
  faces. It is what recognises the owner's face, so it is personal data: profiles live under
  ``$EDGECLOAK_HOME/profiles/<name>/`` with owner-only permissions (folder 0700, files 0600),
  never hold the photos, and ``remove_profile`` deletes them for good;
* the settings it was made with (surrogates, eps, how many photos).

``profile.json`` records the sha256 of ``profile.npz``; a profile whose bytes do not match is
refused with one line (``ModelError``), as a changed bundle is.

Example:
    >>> profile = load_profile("me")                                   # doctest: +SKIP
    >>> profile.owner_similarity(user_embeddings) >= 0                   # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from edgecloak.errors import ModelError, UsageError

from .align import CropGeometry, alignment_matrix
from .atomic import write_bytes_atomic
from .hashing import sha256_file
from .paths import edgecloak_home

PROFILE_FORMAT = 1
# the canonical face frame of a profile's mask: the 112-px ArcFace template at 224 px, zoomed out
# 1.2x so that it covers the region the loop changes (every surrogate's crop + a 15% margin)
CANONICAL = CropGeometry(224, 1.2)
# A face is the owner's when its cosine to the owner's template, less each surrogate's threshold at
# a false-accept rate of 1e-2, is >= 0 on average over the surrogates. The thresholds were measured
# on the evaluation's real impostor pairs (10 users + 609 one-photo distractors; ``edgecloak eval``'s
# ``thresholds_at_far``). The looser FAR (not 1e-3) is deliberate: a false match only costs a less
# fitting start (the refinement, the self-check and its full-length retries still run), while a
# miss sends the owner's face through the normal loop. Measured genuine acceptance: README "Cloak
# profiles".
OWNER_THRESHOLDS = {"mobileface": 0.370, "faceres": 0.597, "facenet-casia": 0.710, "faceres-deep": 0.714,
                    "facenet-keras": 0.422}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def profiles_dir() -> Path:
    """``$EDGECLOAK_HOME/profiles``: one folder per profile."""
    return edgecloak_home() / "profiles"


def check_name(name: str) -> str:
    """A profile name: letters, digits, ``_ . -``, at most 64, not starting with a dot; else ``UsageError``.

    Example:
        >>> check_name("me")
        'me'
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(f"profile name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a "
                         "letter or digit")
    return name


def _region_matrix(landmarks: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """2 x 3: pixel (u, v) of the region ``box`` -> the canonical frame."""
    m = alignment_matrix(landmarks, CANONICAL)
    shifted = m.copy()
    shifted[:, 2] += m[:, :2] @ np.array([box[0], box[1]], np.float64)
    return shifted


def to_canonical(delta: np.ndarray, landmarks: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A face region's mask [h, w, 3] (float) moved into the canonical frame [224, 224, 3] float32
    (0 where the region does not reach).

    Example:
        >>> lm = CANONICAL.template(); d = np.ones((224, 224, 3), np.float32)
        >>> float(to_canonical(d, lm, (0, 0, 224, 224))[112, 112, 0])
        1.0
    """
    size = CANONICAL.size
    return cv2.warpAffine(np.ascontiguousarray(delta, np.float32), _region_matrix(landmarks, box), (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def from_canonical(mask: np.ndarray, landmarks: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The canonical mask [224, 224, 3] placed on a face: its region's mask [h, w, 3] float32 (0
    outside the canonical frame).

    Example:
        >>> lm = CANONICAL.template(); m = np.full((224, 224, 3), 5, np.float32)
        >>> float(from_canonical(m, lm, (0, 0, 224, 224))[112, 112, 1])
        5.0
    """
    x0, y0, x1, y1 = box
    return cv2.warpAffine(np.ascontiguousarray(mask, np.float32), _region_matrix(landmarks, box), (x1 - x0, y1 - y0),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def owner_template(faces: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The owner's template from their faces' unit embeddings ({surrogate: [1, D]} each): per
    surrogate, the normalised mean, [1, D] float32.

    Example:
        >>> [round(float(v), 3) for v in owner_template([{"m": np.array([[1.0, 0.0]])}, {"m": np.array([[0.0, 1.0]])}])["m"][0]]
        [0.707, 0.707]
    """
    out = {}
    for sid in faces[0]:
        mean = np.mean([np.asarray(f[sid], np.float64).reshape(-1) for f in faces], axis=0)
        out[sid] = (mean / max(np.linalg.norm(mean), 1e-12))[None].astype(np.float32)
    return out


def template_similarity(template: Mapping[str, np.ndarray], user: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Cosine of a face's embeddings {surrogate: [1, D]} to an owner template, per surrogate.

    Example:
        >>> template_similarity({"m": np.ones((1, 4))}, {"m": np.ones((1, 4)) / 2})
        {'m': 1.0}
    """
    out = {}
    for sid, t in template.items():
        u, v = np.asarray(user[sid], np.float64).reshape(-1), np.asarray(t, np.float64).reshape(-1)
        out[sid] = float(u @ v / max(np.linalg.norm(u), 1e-12) / max(np.linalg.norm(v), 1e-12))
    return out


def matches_owner(template: Mapping[str, np.ndarray], user: Mapping[str, np.ndarray]) -> bool:
    """Is this face the template's owner: its mean margin over the surrogates' ``OWNER_THRESHOLDS``
    (cosine less threshold) >= 0?

    Example:
        >>> matches_owner({"mobileface": np.ones((1, 4))}, {"mobileface": np.ones((1, 4))})
        True
    """
    sims = template_similarity(template, user)
    return float(np.mean([sims[sid] - OWNER_THRESHOLDS.get(sid, 1.0) for sid in sims])) >= 0.0


@dataclass
class CloakProfile:
    """One user's enrolled cloak: a few canonical masks, each towards its own target, and the owner's
    template.

    Several masks, not one, so that the user's protected photos do not all carry the same pattern
    towards the same stand-in: a face starts from one of them, drawn per photo (``pick``). One
    fixed mask would make the user's cloaked photos easier to link to EACH OTHER than their clean
    photos are (measured: README "Cloak profiles").

    Example:
        >>> p = CloakProfile("me", ("m",), 12.0, np.zeros((2, 224, 224, 3), np.int8), ("tom", "ann"), {"m": np.ones((1, 4))})
        >>> p.owner_similarity({"m": np.ones((1, 4)) / 2})
        {'m': 1.0}
        >>> p.pick(["ann", "bob"], seed=0, key=b"photo")
        1
    """

    name: str
    surrogates: tuple[str, ...]
    eps: float
    masks: np.ndarray  # [M, 224, 224, 3] int8, |value| <= floor(eps)
    targets: tuple[str, ...]  # the target identity each mask moves the owner towards (distinct)
    template: dict[str, np.ndarray]  # surrogate -> [1, D] unit mean embedding of the enrolment faces
    photos: int = 0  # how many photos it was enrolled from
    settings: dict = field(default_factory=dict)  # what enrolment ran (preset, steps, passes)
    created: str = ""
    sha256: str | None = None  # of its profile.npz, once saved or loaded

    def owner_similarity(self, user: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Cosine of a face's unit embeddings {surrogate: [1, D]} to the template, per surrogate."""
        return template_similarity(self.template, user)

    def is_owner(self, user: Mapping[str, np.ndarray]) -> bool:
        """Is this face the owner's (``matches_owner`` against this profile's template)?"""
        return matches_owner(self.template, user)

    def pick(self, available: Sequence[str], seed: int, key: bytes) -> int | None:
        """Which mask a face starts from: one of those whose target is ``available``, drawn from
        ``seed`` and ``key`` (the face's pixels), so one photo always gets the same mask and
        different photos independent draws; None when no mask's target is available."""
        usable = [i for i, t in enumerate(self.targets) if t in available]
        if not usable:
            return None
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int.from_bytes(hashlib.sha256(key).digest()[:8], "little")])
        return usable[int(rng.integers(len(usable)))]

    def region_start(self, index: int, landmarks: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """Mask ``index`` on a face: its region's delta [h, w, 3] float32, within +-floor(eps)."""
        eps = float(np.floor(self.eps))
        return np.clip(from_canonical(self.masks[index].astype(np.float32), landmarks, box), -eps, eps)


def save_profile(profile: CloakProfile, folder: Path | None = None, overwrite: bool = False) -> Path:
    """Write ``profile`` into ``folder`` (default ``profiles_dir()/<name>``) with owner-only
    permissions; ``overwrite=False`` refuses an existing profile of that name (``UsageError``).

    Example:
        >>> save_profile(profile).name          # doctest: +SKIP
        'me'
    """
    check_name(profile.name)
    folder = Path(folder) if folder is not None else profiles_dir() / profile.name
    if (folder / "profile.json").exists() and not overwrite:
        raise UsageError(f"a profile named {profile.name!r} exists ({folder}); remove it first "
                         f"(`edgecloak profiles remove {profile.name}`) or choose another name")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    buffer = io.BytesIO()
    arrays = {"masks": profile.masks.astype(np.int8)}
    arrays.update({f"template/{sid}": np.asarray(t, np.float32) for sid, t in profile.template.items()})
    np.savez(buffer, **arrays)
    write_bytes_atomic(folder / "profile.npz", buffer.getvalue(), mode=0o600)
    profile.sha256 = sha256_file(folder / "profile.npz")
    meta = {"format": PROFILE_FORMAT, "name": profile.name, "surrogates": list(profile.surrogates),
            "eps": profile.eps, "targets": list(profile.targets), "photos": profile.photos, "settings": profile.settings,
            "created": profile.created, "canonical": {"size": CANONICAL.size, "scale": CANONICAL.scale},
            "sha256": {"profile.npz": profile.sha256}}
    write_bytes_atomic(folder / "profile.json", json.dumps(meta, indent=1).encode(), mode=0o600)
    return folder


def load_profile(name_or_folder: str | os.PathLike[str]) -> CloakProfile:
    """A saved profile by name (in ``profiles_dir()``) or folder, its hash checked.

    Raises ``ModelError`` (one line) when it is missing, of another format, or its bytes changed.

    Example:
        >>> load_profile("me").targets         # doctest: +SKIP
        ('tom_hanks', 'ann_smith', 'bob_lee')
    """
    text = str(name_or_folder)
    folder = Path(text) if os.sep in text or Path(text).is_dir() else profiles_dir() / check_name(text)
    try:
        meta = json.loads((folder / "profile.json").read_text())
    except FileNotFoundError:
        raise ModelError(f"no cloak profile in {folder}; enrol one with `edgecloak enroll PHOTO... --name NAME`") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}/profile.json: unreadable ({exc}); remove the profile and enrol again") from None
    if not isinstance(meta, dict) or meta.get("format") != PROFILE_FORMAT:
        raise ModelError(f"{folder}: profile format {meta.get('format') if isinstance(meta, dict) else '?'}, "
                         f"this edgecloak reads {PROFILE_FORMAT}; enrol again")
    want = (meta.get("sha256") or {}).get("profile.npz")
    if not (folder / "profile.npz").is_file() or sha256_file(folder / "profile.npz") != want:
        raise ModelError(f"{folder}/profile.npz: does not match the sha256 its profile.json records (changed or "
                         "damaged); remove the profile and enrol again")
    with np.load(folder / "profile.npz", allow_pickle=False) as data:
        masks = data["masks"]
        template = {key.split("/", 1)[1]: data[key] for key in data.files if key.startswith("template/")}
    surrogates, targets = tuple(meta["surrogates"]), tuple(meta.get("targets") or ())
    if (masks.ndim != 4 or masks.shape[1:] != (CANONICAL.size, CANONICAL.size, 3) or masks.shape[0] != len(targets)
            or not targets or set(template) != set(surrogates)):
        raise ModelError(f"{folder}: the profile's masks or template do not fit its own record; enrol again")
    return CloakProfile(name=meta["name"], surrogates=surrogates, eps=float(meta["eps"]), masks=masks,
                        targets=targets, template=template, photos=int(meta.get("photos", 0)),
                        settings=meta.get("settings", {}), created=meta.get("created", ""), sha256=want)


def list_profiles() -> list[dict]:
    """One record per saved profile (name, surrogates, target, photos, created; ``error`` if unreadable)."""
    out = []
    root = profiles_dir()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not (folder / "profile.json").exists():
            continue
        try:
            p = load_profile(folder)
            out.append({"name": p.name, "surrogates": list(p.surrogates), "targets": list(p.targets), "photos": p.photos,
                        "eps": p.eps, "created": p.created, "path": str(folder)})
        except ModelError as exc:
            out.append({"name": folder.name, "error": str(exc), "path": str(folder)})
    return out


def remove_profile(name: str) -> Path:
    """Delete a saved profile (masks and template) for good; ``UsageError`` when there is none."""
    folder = profiles_dir() / check_name(name)
    if not (folder / "profile.json").exists() and not (folder / "profile.npz").exists():
        raise UsageError(f"no cloak profile named {name!r} in {profiles_dir()}")
    for f in folder.iterdir():  # overwrite before unlinking: the template is biometric data
        if f.is_file():
            size = f.stat().st_size
            with open(f, "r+b") as fh:
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
    shutil.rmtree(folder)
    return folder
