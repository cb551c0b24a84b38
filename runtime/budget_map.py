"""How much each pixel of one face's region may change: the per-pixel budget of its mask.

The promise is an L_inf one: no pixel moves by more than ``eps`` (on 0..255). Inside that promise,
where the budget is spent decides what people see. ``budget_map`` returns the per-pixel limit
(always <= eps) as the product of two weights in [0, 1]:

* the **support**, where the mask may live at all:

  - ``"box"``: the face region's rectangle, faded to 0 over its edges that lie inside the photo
    (``FaceRegion.edge_weight_map``; the paper's region, and the default);
  - ``"face"``: a feathered ellipse that covers the face from forehead to chin, placed by the five
    landmarks (it turns and scales with the face). Outside it the weight is 0, so background
    pixels never change; inside it falls smoothly to 0 at the edge, so no edge is visible.
  - ``"head"``: the face's ellipse, and around it, inside the box, only pixels with texture of
    their own (hair, ears, a busy background; ``texture_weight``): a flat background keeps no
    budget, so the box's patterned rectangle is gone while the pixels around the face that the
    recognizers' crops see and that can hide a change keep theirs.

* the **perceptual** weight (strength ``perceptual`` in [0, 1]; 0 turns it off): a simple
  just-noticeable-difference model. A change hides in texture (hair, beard, eyebrows, edges) and
  shows on flat skin and smooth gradients, so each pixel's weight follows the local contrast of
  the original's luminance: full budget where the local standard deviation reaches
  ``TEXTURE_FULL`` levels, down to ``FLAT_FLOOR`` of it on flat areas. Pixels near black or white
  get less too (``DARK_LIGHT``): noise shows in shadows and highlights of a compressed photo.
  With strength s the weight is ``1 - s * (1 - jnd)``.

Colour: ``chroma_direction`` turns a step's gradient towards luminance (the same change on R, G and
B) by the config's ``chroma`` share; a greyscale photo always gets ``chroma`` 0, so it stays
greyscale.

Everything is numpy + OpenCV and computed once per face.

Example:
    >>> from edgecloak.runtime.align import ARCFACE_TEMPLATE_112, CropGeometry
    >>> from edgecloak.runtime.face_region import FaceRegion
    >>> face = FaceRegion.around(ARCFACE_TEMPLATE_112 + 100, (320, 320), {"m": CropGeometry(112)})
    >>> support = face_support(face)
    >>> support.shape == face.region_hw, float(support.max()), float(support[0, 0])
    (True, 1.0, 0.0)
"""

from __future__ import annotations

import cv2
import numpy as np

from .align import CropGeometry, alignment_matrix
from .face_region import FaceRegion, to_3x3

# the face's ellipse in the 112-px aligned frame (ArcFace template: eyes at y 52, mouth at y 92):
# forehead (y 2) to chin (y 114), cheek to cheek (x 12..100)
FACE_ELLIPSE_CENTRE_112 = (56.0, 58.0)
FACE_ELLIPSE_AXES_112 = (44.0, 56.0)
FACE_FEATHER_112 = 9.0  # width of the fade at the ellipse's edge, in 112-px face pixels

TEXTURE_SIGMA = 1.5  # window (Gaussian sigma, photo px) of the local statistics: what the eye pools
TEXTURE_FULL = 10.0  # local luminance std (levels) at which a pixel gets the whole budget
# The head support's texture ramp around the face (local luminance std, levels): up to FLAT_STD a
# pixel counts as flat and keeps no budget, from EDGE_STD it keeps all of it. Chosen on the sample
# photo, whose plain blue background has a grain of std 2.5-5 levels (median 5.3) and whose hair,
# cap, flag and collar edges reach 15-60: with 6 and 16, half the off-face pixels (the background)
# keep nothing and the edges keep their budget.
FLAT_STD = 6.0
EDGE_STD = 16.0
FLAT_FLOOR = 0.35  # share of the budget a perfectly flat pixel keeps
DARK_LIGHT = 24.0  # luminance (levels) from black or white below which the budget tapers
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 luma weights


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def face_support(face: FaceRegion) -> np.ndarray:
    """[h, w] float32 weights in [0, 1] over the face's region: 1 inside the face's ellipse,
    falling smoothly (smoothstep) to exactly 0 at its edge and outside it.

    Example:
        >>> from edgecloak.runtime.align import ARCFACE_TEMPLATE_112
        >>> face = FaceRegion(ARCFACE_TEMPLATE_112, (0, 0, 112, 112), {})
        >>> s = face_support(face)
        >>> float(s[58, 56]), float(s[58, 5]), float(s[1, 56])
        (1.0, 0.0, 0.0)
    """
    h, w = face.region_hw
    x0, y0 = face.box[0], face.box[1]
    to_face = to_3x3(alignment_matrix(face.landmarks, CropGeometry(112)))  # photo px -> 112-px face
    xs = np.arange(w, dtype=np.float64) + x0
    ys = np.arange(h, dtype=np.float64) + y0
    u = to_face[0, 0] * xs[None, :] + to_face[0, 1] * ys[:, None] + to_face[0, 2] - FACE_ELLIPSE_CENTRE_112[0]
    v = to_face[1, 0] * xs[None, :] + to_face[1, 1] * ys[:, None] + to_face[1, 2] - FACE_ELLIPSE_CENTRE_112[1]
    radius = np.sqrt((u / FACE_ELLIPSE_AXES_112[0]) ** 2 + (v / FACE_ELLIPSE_AXES_112[1]) ** 2)
    feather = FACE_FEATHER_112 / min(FACE_ELLIPSE_AXES_112)  # in units of the normalised radius
    return _smoothstep((1.0 - radius) / feather).astype(np.float32)


def luminance(region: np.ndarray) -> np.ndarray:
    """[h, w] float32 luma of a region batch [1, 3, h, w] (0..255)."""
    return np.tensordot(LUMA, region[0].astype(np.float32), axes=1)


def _local_statistics(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) [h, w] of the luminance over a Gaussian window of ``TEXTURE_SIGMA``."""
    y = luminance(region)
    mean = cv2.GaussianBlur(y, (0, 0), TEXTURE_SIGMA, borderType=cv2.BORDER_REFLECT_101)
    square = cv2.GaussianBlur(y * y, (0, 0), TEXTURE_SIGMA, borderType=cv2.BORDER_REFLECT_101)
    return mean, np.sqrt(np.maximum(square - mean * mean, 0.0))


def texture_weight(region: np.ndarray) -> np.ndarray:
    """[h, w] float32 weights in [0, 1]: 0 where the original is flat (local luminance std at most
    ``FLAT_STD`` levels, the grain of a plain background), rising to 1 at ``EDGE_STD`` levels.

    Example:
        >>> flat = np.full((1, 3, 16, 16), 128, np.float32)
        >>> noisy = flat + np.random.default_rng(0).normal(0, 30, flat.shape).astype(np.float32)
        >>> float(texture_weight(flat).max()), bool(texture_weight(noisy).mean() > 0.9)
        (0.0, True)
    """
    _, std = _local_statistics(region)
    return np.clip((std - FLAT_STD) / (EDGE_STD - FLAT_STD), 0.0, 1.0).astype(np.float32)


def jnd_weight(region: np.ndarray) -> np.ndarray:
    """[h, w] float32 weights in [FLAT_FLOOR * taper, 1]: how much of the budget each pixel can
    take unseen, from the original's local luminance contrast and its distance to black/white.

    Example:
        >>> flat = np.full((1, 3, 16, 16), 128, np.float32)
        >>> noisy = flat + np.random.default_rng(0).normal(0, 30, flat.shape).astype(np.float32)
        >>> round(float(jnd_weight(flat).mean()), 2), bool(jnd_weight(noisy).mean() > 0.9)
        (0.35, True)
    """
    mean, std = _local_statistics(region)
    texture = FLAT_FLOOR + (1.0 - FLAT_FLOOR) * np.minimum(std / TEXTURE_FULL, 1.0)
    extremes = np.minimum(mean, 255.0 - mean)  # how far from black or white
    taper = 0.5 + 0.5 * np.minimum(extremes / DARK_LIGHT, 1.0)
    return (texture * taper).astype(np.float32)


def budget_map(region: np.ndarray, face: FaceRegion, eps: float, support: str = "box",
               perceptual: float = 0.0) -> np.ndarray:
    """The per-pixel limit [1, 1, h, w] float32 of one face's mask: ``eps`` times the support's
    weight times the perceptual weight (see the module's docstring). Every value is in [0, eps].

    ``region`` is the ORIGINAL region [1, 3, h, w] (0..255) the budget is around.

    Example:
        >>> from edgecloak.runtime.align import ARCFACE_TEMPLATE_112
        >>> face = FaceRegion(ARCFACE_TEMPLATE_112, (0, 0, 112, 112), {})
        >>> flat = np.full((1, 3, 112, 112), 128, np.float32)
        >>> round(float(budget_map(flat, face, 12.0).max()), 3), round(float(budget_map(flat, face, 12.0, "face", 1.0).max()), 3)
        (12.0, 4.2)
    """
    if support == "box":
        weight = face.edge_weight_map()
    elif support == "face":
        weight = face_support(face)
    elif support == "head":
        weight = np.maximum(face_support(face), face.edge_weight_map() * texture_weight(region))
    else:
        raise ValueError(f"support must be 'box', 'face' or 'head', got {support!r}")
    if perceptual > 0:
        weight = weight * (1.0 - np.float32(perceptual) * (1.0 - jnd_weight(region)))
    return (np.float32(eps) * np.clip(weight, 0.0, 1.0).astype(np.float32))[None, None]


def is_greyscale(region: np.ndarray) -> bool:
    """Are the three channels of a region batch [1, 3, h, w] identical (a greyscale photo)?"""
    return bool(np.array_equal(region[:, 0], region[:, 1]) and np.array_equal(region[:, 1], region[:, 2]))


def chroma_direction(grads: np.ndarray, chroma: float) -> np.ndarray:
    """Keep ``chroma`` of each gradient's colour part [B, 3, h, w] (in place): the step's change is
    its mean over R, G and B (a change of brightness) plus ``chroma`` times the rest (a change of
    colour). 1 leaves the gradient as it is, 0 changes the three channels alike.

    Example:
        >>> g = np.array([[[[3.0]], [[0.0]], [[0.0]]]], np.float32)
        >>> chroma_direction(g, 0.0).ravel().tolist()
        [1.0, 1.0, 1.0]
    """
    if chroma >= 1.0:
        return grads
    grey = grads.mean(axis=1, keepdims=True)
    grads -= grey
    grads *= np.float32(chroma)
    grads += grey
    return grads
