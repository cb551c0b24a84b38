"""Enrolment: a user's cloak profile from a few photos of them (``runtime.profile`` stores it).

Each universal identity mask is made by the product's one TIP-IM loop, run over the enrolment
photos in turn: each photo's loop starts from the mask the photos before it left (moved onto its
face through the canonical frame), and its result, moved back, becomes the mask. ``passes`` rounds
over all photos make it fit every one of them: the usual way a universal perturbation is built,
with the loop's own input diversity (alignment jitter, a new seed per photo and pass) as
augmentation. A mask's target is the one the loop picks for the first photo among the given
targets that do not look like the user and no earlier mask chases; every later photo is pushed
towards the same one. ``PROFILE_MASKS`` masks are made this way, one per target.

Example:
    >>> cloaker = Cloaker.load(preset="balanced")                               # doctest: +SKIP
    >>> profile = enroll(cloaker.protector, cloaker.config, cloaker.targets,
    ...                  ["me1.jpg", "me2.jpg", "me3.jpg"], "me")               # doctest: +SKIP
    >>> profile.targets, profile.photos                                         # doctest: +SKIP
    (('tom_hanks', 'ann_smith', 'bob_lee'), 3)
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable, Sequence

import numpy as np

from edgecloak.errors import UsageError
from edgecloak.runtime.config import TIPIMConfig
from edgecloak.runtime.image_io import load_image
from edgecloak.runtime.protector import RuntimeProtector
from edgecloak.runtime.profile import CANONICAL, CloakProfile, check_name, from_canonical, owner_template, to_canonical
from edgecloak.runtime.targets import TargetBank
from edgecloak.runtime.tipim import RuntimeTIPIM


ENROL_PASSES = 2  # rounds over the enrolment photos
# masks per profile, each towards its own target; a photo starts from one drawn at random, so that
# the user's cloaked photos do not all carry one pattern (linkability: README "Cloak profiles")
PROFILE_MASKS = 3
# refinement steps of a profile-started face (``Cloaker.use_profile``); see README "Cloak profiles"
DEFAULT_PROFILE_STEPS = 2
MIN_PHOTOS = 2


def enroll(
    protector: RuntimeProtector,
    config: TIPIMConfig,
    targets: TargetBank,
    photos: Sequence[str | os.PathLike[str] | np.ndarray],
    name: str,
    passes: int = ENROL_PASSES,
    steps: int | None = None,
    masks_count: int = PROFILE_MASKS,
    preset: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CloakProfile:
    """A cloak profile for the user in ``photos`` (the largest face of each), not yet saved.

    ``protector`` runs the surrogates, ``config`` is the loop's (``steps`` overrides its N per photo
    and pass), ``targets`` the identities to choose from; ``masks_count``: how many masks, each
    towards another target (fewer when fewer targets are left); ``preset`` is recorded in the
    profile's settings. ``progress(done, total)`` after each loop.

    Lives beside the SDK's ``Cloaker`` (which calls it with its own protector, config and targets)
    rather than taking one, so that neither module imports the other.

    Raises ``UsageError`` for fewer than two photos or a bad name, ``NoFaceError`` for a photo
    without a face.
    """
    check_name(name)
    if len(photos) < MIN_PHOTOS:
        raise UsageError(f"enrolment needs at least {MIN_PHOTOS} photos of the user, got {len(photos)}")
    if passes < 1:
        raise UsageError(f"passes must be >= 1, got {passes}")
    if masks_count < 1:
        raise UsageError(f"masks must be >= 1, got {masks_count}")
    faces = []
    for photo in photos:
        image = photo if isinstance(photo, np.ndarray) else load_image(photo)
        label = "image" if isinstance(photo, np.ndarray) else str(photo)
        detected = protector.detector.largest_face(image, label)
        region = protector.face_region(detected.landmarks, image.shape[:2])
        x0, y0, x1, y1 = region.box
        pixels = np.ascontiguousarray(image[y0:y1, x0:x1].transpose(2, 0, 1)[None], dtype=np.float32)
        faces.append((pixels, region, protector.embed_face(image, region)))
    template = owner_template([user for _, _, user in faces])
    bank = targets.excluding_lookalikes(template)
    if bank.size == 0:
        raise UsageError("every target identity looks like the user; enrol with other --target photos")
    config = config if steps is None else replace(config, steps=steps)
    eps = float(np.floor(config.eps))
    masks, chosen = [], []
    total, done = masks_count * passes * len(faces), 0
    while len(masks) < masks_count:
        candidates = bank.select([i for i, t in enumerate(bank.identities) if t not in chosen])
        if candidates.size == 0:
            break  # fewer target identities than masks asked for: keep those made
        mask = np.zeros((CANONICAL.size, CANONICAL.size, 3), np.float32)
        target: str | None = None
        for _pass in range(passes):
            for pixels, region, _user in faces:
                chased = candidates if target is None else candidates.select([candidates.identities.index(target)])
                start = pixels + np.clip(from_canonical(mask, region.landmarks, region.box), -eps, eps) \
                    .transpose(2, 0, 1)[None]
                loop = RuntimeTIPIM(protector.engines, replace(config, seed=config.seed + done))
                result = loop.run(pixels, region, chased.select(range(min(chased.size, loop.max_targets))),
                                  start=np.clip(start, 0, 255))
                if target is None:
                    target = chased.identities[result.target_index]
                delta = (result.region - pixels)[0].transpose(1, 2, 0)
                moved = to_canonical(delta, region.landmarks, region.box)
                covered = to_canonical(np.ones_like(delta), region.landmarks, region.box) > 0.999
                mask[covered] = moved[covered]  # where this face reaches, its mask is the new one
                done += 1
                if progress is not None:
                    progress(done, total)
        masks.append(np.clip(np.round(mask), -eps, eps).astype(np.int8))
        chosen.append(str(target))
    return CloakProfile(
        name=name, surrogates=tuple(protector.surrogate_ids), eps=float(config.eps),
        masks=np.stack(masks), targets=tuple(chosen), template=template,
        photos=len(faces), settings={"steps": int(config.steps), "passes": passes, "masks": len(masks),
                                     "preset": preset},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
