"""The random draws of a TIP-IM run, from one numpy generator, in one fixed order.

The runtime loop and the torch oracle (``edgecloak.export.reference.oracle``, tests only) call
these functions with ``np.random.default_rng(seed)`` in the same order per step (jitter, then the
MMD augmentations), so the same seed gives the same input diversity in both: that is what makes
their results comparable pixel for pixel. The loop's feature-dropout masks (``dropout_mask``) come
from the same generator, drawn only when that technique is on, and so are the mirror images
(``maybe_mirror``) and the low-resolution views (``maybe_low_resolution``).

Example:
    >>> rng = np.random.default_rng(0)
    >>> m = sample_jitter(Jitter(probability=1.0), rng)
    >>> m.shape
    (3, 3)
"""

from __future__ import annotations

import math

import numpy as np

from .config import Jitter


def sample_jitter(jitter: Jitter, rng: np.random.Generator) -> np.ndarray | None:
    """A random 3x3 similarity about the crop centre (in units of the crop size), or None.

    Five uniforms are always drawn, so the stream stays aligned whether or not this step jitters.
    """
    u = rng.random(5)
    if u[0] >= jitter.probability:
        return None
    angle = math.radians((2 * u[1] - 1) * jitter.max_rotation_deg)
    scale = 1.0 + (2 * u[2] - 1) * jitter.max_scale
    tx, ty = (2 * u[3] - 1) * jitter.max_shift, (2 * u[4] - 1) * jitter.max_shift
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


# a horizontal mirror in the jitter's coordinates (normalised, centred on the crop)
MIRROR = np.diag([-1.0, 1.0, 1.0])


def maybe_mirror(jitter: np.ndarray | None, probability: float, rng: np.random.Generator) -> np.ndarray | None:
    """``jitter @ MIRROR`` (the crop mirrored left-right, then jittered) with ``probability``, else ``jitter``.

    One uniform is drawn only when ``probability`` > 0, so a loop without mirrors keeps its random
    stream (and the torch oracle's).

    Example:
        >>> maybe_mirror(None, 1.0, np.random.default_rng(0)).tolist()
        [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        >>> maybe_mirror(None, 0.0, np.random.default_rng(0)) is None
        True
    """
    if probability <= 0 or rng.random() >= probability:
        return jitter
    return MIRROR.copy() if jitter is None else jitter @ MIRROR


def maybe_low_resolution(probability: float, min_scale: float, rng: np.random.Generator) -> float | None:
    """A resolution scale in [``min_scale``, 1) with ``probability`` (the surrogates then see the face
    rendered at that share of their input side and resized back up), else None.

    Nothing is drawn when ``probability`` is 0, so a loop without the technique keeps its random
    stream (and the torch oracle's).

    Example:
        >>> 0.5 <= maybe_low_resolution(1.0, 0.5, np.random.default_rng(0)) < 1.0
        True
        >>> maybe_low_resolution(0.0, 0.5, np.random.default_rng(0)) is None
        True
    """
    if probability <= 0 or rng.random() >= probability:
        return None
    return float(min_scale + (1.0 - min_scale) * rng.random())


def sample_augmentations(batch: int, rng: np.random.Generator) -> list[tuple[int, int, bool]]:
    """``batch - 1`` paired augmentations (dx, dy, flip) for the MMD batch: roll by +-2 px, maybe flip.

    The first copy of the batch is always the unaugmented pair.
    """
    draws = rng.integers(-2, 3, size=(batch - 1, 2))
    flips = rng.integers(0, 2, size=batch - 1)
    return [(int(dx), int(dy), bool(f)) for (dx, dy), f in zip(draws, flips)]


def dropout_mask(rate: float, rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    """Fill ``out`` (float32) with an inverted-dropout mask: each value is 0 with probability ``rate``
    and ``1 / (1 - rate)`` otherwise, so the mean activation is unchanged. The rate is rounded to
    a multiple of 1/256: one random byte per value (a surrogate has millions of them, every step).

    Example:
        >>> m = dropout_mask(0.25, np.random.default_rng(0), np.empty((1, 100_000), np.float32))
        >>> sorted(set(m.ravel().tolist())), round(float((m == 0).mean()), 2)
        ([0.0, 1.3333333730697632], 0.25)
    """
    dropped = round(rate * 256)
    bits = np.frombuffer(rng.bytes(out.size), np.uint8).reshape(out.shape)
    return np.multiply(bits >= dropped, np.float32(256 / (256 - dropped)), out=out)
