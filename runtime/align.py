"""Face alignment (5-point similarity transform) and pasting a crop-space delta back into a photo.

Conventions: an affine ``M`` is a 2 x 3 float64 matrix mapping photo (x, y) to crop (x, y), the
form ``cv2.warpAffine`` takes. Landmarks are five (x, y) points in the order left eye, right eye,
nose, left mouth corner, right mouth corner, "left" as seen in the image.

The paste-back is where the privacy budget is enforced: ``paste_delta`` guarantees
``|out - image| <= eps`` on every pixel and leaves pixels outside the face's footprint untouched,
whatever the delta holds.

Example:
    >>> import numpy as np
    >>> from edgecloak.runtime.align import CropGeometry, alignment_matrix, warp_face, paste_delta
    >>> geometry = CropGeometry(112)
    >>> M = alignment_matrix(landmarks, geometry)  # doctest: +SKIP
    >>> crop = warp_face(photo, M, geometry.size)  # doctest: +SKIP
    >>> cloaked = paste_delta(photo, np.zeros((112, 112, 3), np.float32), M, eps=8.0)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# insightface's "arcface_src": where the five landmarks sit in a 112 x 112 aligned face.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_TEMPLATE_112.setflags(write=False)


@dataclass(frozen=True)
class CropGeometry:
    """How a recognizer wants its face crop: the 112 template scaled to ``size``, zoomed out by ``scale``.

    ``scale > 1`` shows more context around the face (the landmarks move towards the centre by
    ``1 / scale``); facenet-style models trained on loose MTCNN boxes prefer about 1.2-1.3.

    Example:
        >>> CropGeometry(112).template()[0].round(2).tolist()
        [38.29, 51.7]
        >>> CropGeometry(224, scale=2.0).template()[0].round(2).tolist()
        [94.29, 107.7]
    """

    size: int
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.size <= 0 or self.scale <= 0:
            raise ValueError(f"CropGeometry needs size > 0 and scale > 0, got size={self.size}, scale={self.scale}")

    def template(self) -> np.ndarray:
        """The five landmark positions in this crop, shape (5, 2), float64."""
        centre = self.size / 2.0
        scaled = ARCFACE_TEMPLATE_112 * (self.size / 112.0)
        return centre + (scaled - centre) / self.scale


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) src -> dst.

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point
    patterns". Returns the 2 x 3 matrix M with ``dst ~= src @ M[:, :2].T + M[:, 2]``.

    Example:
        >>> src = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> similarity_transform(src, 2 * src + 3).round(6).tolist()
        [[2.0, 0.0, 3.0], [0.0, 2.0, 3.0]]
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need two matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # the best fit would mirror: forbid it
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    src_var = (src_c**2).sum() / n
    if src_var <= 0:
        raise ValueError("source points are all identical; cannot fit a similarity transform")
    scale = float((d * sign).sum() / src_var)
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def alignment_matrix(landmarks: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """The 2 x 3 photo -> crop transform putting ``landmarks`` (5, 2) on ``geometry``'s template.

    Example:
        >>> M = alignment_matrix(CropGeometry(112).template(), CropGeometry(112))
        >>> np.allclose(M, [[1, 0, 0], [0, 1, 0]])
        True
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"expected five (x, y) landmarks, shape (5, 2), got {landmarks.shape}")
    return similarity_transform(landmarks, geometry.template())


def invert_affine(M: np.ndarray) -> np.ndarray:
    """The inverse of a 2 x 3 affine (crop -> photo for an alignment matrix).

    Example:
        >>> (invert_affine(np.array([[2.0, 0, 4], [0, 2.0, 6]])) + 0.0).tolist()
        [[0.5, 0.0, -2.0], [0.0, 0.5, -3.0]]
    """
    return cv2.invertAffineTransform(np.asarray(M, dtype=np.float64))


def warp_face(image: np.ndarray, M: np.ndarray, size: int) -> np.ndarray:
    """Cut the aligned ``size`` x ``size`` crop out of ``image`` (bilinear, replicated border).

    Keeps the input's dtype (uint8 photo -> uint8 crop, float -> float). Replicating the border
    rather than padding black keeps faces near the photo edge from gaining a hard black edge the
    recognizer never saw in training.

    Example:
        >>> crop = warp_face(photo, M, 112)  # doctest: +SKIP
    """
    return cv2.warpAffine(
        image,
        np.asarray(M, dtype=np.float64),
        (int(size), int(size)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def footprint_mask(image_shape: tuple[int, ...], M: np.ndarray, crop_size: tuple[int, int]) -> np.ndarray:
    """Boolean H x W mask of the photo pixels a crop of ``crop_size`` (h, w) can change via ``paste_delta``.

    Example:
        >>> mask = footprint_mask(photo.shape, M, (112, 112))  # doctest: +SKIP
    """
    mask = np.zeros(tuple(image_shape[:2]), dtype=bool)
    roi = _footprint_roi(image_shape, M, crop_size)
    if roi is not None:
        (x0, y0, x1, y1), m_roi = roi
        ones = np.ones(tuple(crop_size[:2]), dtype=np.float32)
        mask[y0:y1, x0:x1] = _inverse_warp(ones, m_roi, (x1 - x0, y1 - y0)) > 0
    return mask


def paste_delta(image_uint8: np.ndarray, delta_crop_float: np.ndarray, M: np.ndarray, eps: float) -> np.ndarray:
    """Add a crop-space perturbation to the photo, with ``|out - image| <= eps`` on every pixel.

    The delta (h x w x C, in 0..255 pixel units, crop coordinates) is resampled into photo
    coordinates by the inverse of ``M`` (bilinear, zero outside the crop), clipped to ``[-eps, eps]``,
    added, clipped to [0, 255] and rounded. Rounding could overshoot a non-integer ``eps`` by up to
    half a level, so the result is clipped once more to ``image +- floor(eps)``: the bound holds
    exactly, and pixels outside the crop's footprint come back bit-identical. Only the footprint's
    bounding box is resampled, so a face in a 50 MP photo costs what the face costs.

    Raises:
        ValueError: wrong shapes/dtypes, ``eps < 0``, or a non-finite delta.

    Example:
        >>> out = paste_delta(photo, delta, M, eps=8.0)  # doctest: +SKIP
        >>> int(np.abs(out.astype(int) - photo).max()) <= 8  # doctest: +SKIP
        True
    """
    if not (isinstance(image_uint8, np.ndarray) and image_uint8.dtype == np.uint8 and image_uint8.ndim == 3):
        raise ValueError("image must be an H x W x C uint8 array")
    delta = np.asarray(delta_crop_float, dtype=np.float32)
    if delta.ndim != 3 or delta.shape[2] != image_uint8.shape[2]:
        raise ValueError(f"delta must be h x w x {image_uint8.shape[2]}, got {delta.shape}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not np.isfinite(delta).all():
        raise ValueError("delta holds NaN or infinite values")
    out = image_uint8.copy()
    roi = _footprint_roi(image_uint8.shape, M, delta.shape[:2])
    if roi is None:  # the crop lies entirely outside the photo
        return out
    (x0, y0, x1, y1), m_roi = roi
    warped = _inverse_warp(delta, m_roi, (x1 - x0, y1 - y0))
    if warped.ndim == 2:  # cv2 drops a single channel axis
        warped = warped[:, :, None]
    image = image_uint8[y0:y1, x0:x1].astype(np.float32)
    pasted = np.rint(np.clip(image + np.clip(warped, -eps, eps), 0.0, 255.0))
    step = float(np.floor(eps))
    out[y0:y1, x0:x1] = np.clip(pasted, image - step, image + step).astype(np.uint8)
    return out


def _footprint_roi(
    image_shape: tuple[int, ...], M: np.ndarray, crop_hw: tuple[int, int]
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Photo-space box (x0, y0, x1, y1) that holds every pixel a bilinear inverse warp of the crop
    can touch, and ``M`` re-based to that box's origin; None when the box misses the photo."""
    height, width = image_shape[:2]
    crop_h, crop_w = crop_hw[:2]
    M = np.asarray(M, dtype=np.float64)
    # Bilinear sampling gives non-zero values for crop positions in (-1, w) x (-1, h).
    corners = np.array([[-1.0, -1.0], [crop_w, -1.0], [-1.0, crop_h], [crop_w, crop_h]])
    inv = invert_affine(M)
    photo = corners @ inv[:, :2].T + inv[:, 2]
    x0 = max(int(np.floor(photo[:, 0].min())) - 1, 0)
    y0 = max(int(np.floor(photo[:, 1].min())) - 1, 0)
    x1 = min(int(np.ceil(photo[:, 0].max())) + 2, width)
    y1 = min(int(np.ceil(photo[:, 1].max())) + 2, height)
    if x0 >= x1 or y0 >= y1:
        return None
    # crop = A (q + o) + t for ROI pixel q at offset o = (x0, y0).
    m_roi = M.copy()
    m_roi[:, 2] = M[:, :2] @ np.array([x0, y0], dtype=np.float64) + M[:, 2]
    return (x0, y0, x1, y1), m_roi


def _inverse_warp(crop: np.ndarray, M: np.ndarray, dsize: tuple[int, int]) -> np.ndarray:
    """Resample a crop into photo space: dst(p) = crop(M p), zero outside the crop."""
    return cv2.warpAffine(
        crop,
        M,
        dsize,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
