"""What uploads do to photos: re-encoding, downscaling, mild blur (applied to protected probes).

Each transform maps an RGB uint8 image to (new image, scale of its coordinates), so the face box
the evaluator looks for can follow a resize. JPEG uses Pillow's defaults for chroma (4:2:0), as
social networks' encoders do, not the 4:4:4 ``edgecloak protect`` writes.

Example:
    >>> img = np.zeros((64, 64, 3), np.uint8)
    >>> out, scale = apply_transform("downscale0.5", img)
    >>> out.shape, scale
    ((32, 32, 3), 0.5)
"""

from __future__ import annotations

import io
from typing import Callable

import cv2
import numpy as np
from PIL import Image


def _jpeg(quality: int) -> Callable[[np.ndarray], tuple[np.ndarray, float]]:
    def encode(image: np.ndarray) -> tuple[np.ndarray, float]:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        return np.asarray(Image.open(buf).convert("RGB")), 1.0

    return encode


def _downscale(factor: float) -> Callable[[np.ndarray], tuple[np.ndarray, float]]:
    def resize(image: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = image.shape[:2]
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA), factor

    return resize


def _blur(sigma: float) -> Callable[[np.ndarray], tuple[np.ndarray, float]]:
    return lambda image: (cv2.GaussianBlur(image, (0, 0), sigma), 1.0)


# name -> transform; "none" is the lossless upload the protection was made for
UPLOAD_TRANSFORMS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, float]]] = {
    "none": lambda image: (image, 1.0),
    "jpeg90": _jpeg(90),
    "jpeg75": _jpeg(75),
    "jpeg50": _jpeg(50),
    "downscale0.5": _downscale(0.5),
    "blur1": _blur(1.0),
}


def apply_transform(name: str, image: np.ndarray) -> tuple[np.ndarray, float]:
    """Apply the named upload transform; ``ValueError`` listing the known names otherwise."""
    try:
        return UPLOAD_TRANSFORMS[name](image)
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; choose from {', '.join(UPLOAD_TRANSFORMS)}") from None
