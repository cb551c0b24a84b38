"""Gaussian smoothing for the loop's transfer techniques, in the face's own scale (numpy + OpenCV).

Two techniques that help a cloak fool recognizers it never optimised on, both nearly free:

* translation-invariant gradients (TI, Dong et al. 2019): smooth each step's gradient with a
  Gaussian before the sign step, so the mask does not depend on the exact pixel alignment a
  surrogate crops with (other recognizers align differently);
* a smoothed copy (LowKey, Cherepanova et al. 2021, as an input transform): on a random share of
  the steps the surrogates see a Gaussian-blurred copy of the image, so the mask keeps working
  after the low-pass filtering that resizing and re-compression apply, and relies less on the
  finest pixel patterns one network happens to be sensitive to. The blur is its own adjoint (a
  symmetric kernel), so the gradient is pulled back through it by blurring it the same way.

Sigmas are given in pixels of a 112-px aligned face (the size most recognizers crop to) and turned
into photo pixels per face from its eye distance, so a setting means the same on a selfie and on
a small face in a group photo.

Example:
    >>> g = np.zeros((1, 3, 9, 9), np.float32); g[0, :, 4, 4] = 1.0
    >>> out = smooth_planes(g, sigma=1.0)
    >>> round(float(out[0, 0].sum()), 2), bool(out[0, 0, 4, 4] < 1.0)
    (1.0, True)
"""

from __future__ import annotations

import cv2
import numpy as np

from .align import ARCFACE_TEMPLATE_112

# eye distance in the 112-px aligned face (ArcFace template): the unit of the sigmas
EYE_DISTANCE_112 = float(np.linalg.norm(ARCFACE_TEMPLATE_112[1] - ARCFACE_TEMPLATE_112[0]))


def photo_pixels_per_face_pixel(landmarks: np.ndarray) -> float:
    """How many photo pixels one pixel of the 112-px aligned face spans, from the 5 landmarks.

    Example:
        >>> round(photo_pixels_per_face_pixel(ARCFACE_TEMPLATE_112 * 2.0), 6)
        2.0
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    return float(np.linalg.norm(landmarks[1] - landmarks[0])) / EYE_DISTANCE_112


def smooth_planes(batch: np.ndarray, sigma: float, out: np.ndarray | None = None) -> np.ndarray:
    """Gaussian-blur every [h, w] plane of a float32 [B, C, h, w] array (``sigma`` in its pixels;
    borders reflected). In place when ``out`` is ``batch``. A sigma of 0 copies (or does nothing).
    """
    if out is None:
        out = np.empty_like(batch)
    if sigma <= 0:
        if out is not batch:
            out[...] = batch
        return out
    for b in range(batch.shape[0]):
        for c in range(batch.shape[1]):
            cv2.GaussianBlur(batch[b, c], (0, 0), sigma, dst=out[b, c], borderType=cv2.BORDER_REFLECT_101)
    return out
