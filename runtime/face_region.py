"""Which photo pixels one face's mask may change, and how each surrogate crops them.

The masks are optimised in PHOTO pixels (the pixels that get saved), not in a 112x112 crop pasted
back afterwards: measurements (docs/design.md, "Measured facts") show that warping a crop
mask back into the photo and rounding it loses much of its effect. A ``FaceRegion`` is the smallest
photo rectangle covering every surrogate's aligned crop (plus a margin for the alignment jitter),
the photo->crop matrix of each surrogate re-based on that rectangle, and the per-pixel budget
weight that fades the mask out towards the rectangle's edges.

Shared by the runtime (``runtime/warp.py`` samples it with numpy) and the torch side
(``export/reference/view.py`` samples it with ``grid_sample`` for the test oracle).

Example:
    >>> region = FaceRegion.around(landmarks, image_hw=(480, 640), geometries={"mobileface": CropGeometry(112)})  # doctest: +SKIP
    >>> x0, y0, x1, y1 = region.box                                                               # doctest: +SKIP
"""

from __future__ import annotations

import math

import numpy as np

from .align import CropGeometry, alignment_matrix


def grown_box(box, shape: tuple[int, ...], margin: float = 0.25) -> tuple[int, int, int, int]:
    """A detection box grown by ``margin`` of its size on each side, clipped to the image: (x0, y0, x1, y1).

    Example:
        >>> grown_box((100, 50, 180, 150), (200, 300, 3))
        (80, 25, 200, 175)
    """
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    h, w = shape[:2]
    return (max(0, int(x0 - mx)), max(0, int(y0 - my)), min(w, int(math.ceil(x1 + mx))), min(h, int(math.ceil(y1 + my))))


def box_iou(a, b) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 when they do not touch).

    Example:
        >>> box_iou((0, 0, 2, 2), (1, 0, 3, 2))
        0.3333333333333333
    """
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def to_3x3(m: np.ndarray) -> np.ndarray:
    """A 2x3 affine as its 3x3 homogeneous matrix."""
    return np.vstack([m, [0.0, 0.0, 1.0]])


class FaceRegion:
    """One face: the photo region that may change, and how each recognizer crops it."""

    def __init__(
        self,
        landmarks: np.ndarray,
        box: tuple[int, int, int, int],
        geometries: dict[str, CropGeometry],
        image_hw: tuple[int, int] | None = None,
        feather: int = 0,
    ):
        self.image_hw = image_hw
        self.feather = feather
        self.landmarks = np.asarray(landmarks, dtype=np.float64)
        self.box = box  # x0, y0, x1, y1 in photo pixels (exclusive end)
        self.geometries = dict(geometries)
        x0, y0 = box[0], box[1]
        # photo -> crop matrices, re-based on the region's top-left corner
        shift = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
        self.matrices = {
            name: (to_3x3(alignment_matrix(self.landmarks, g)) @ shift)[:2] for name, g in self.geometries.items()
        }

    @classmethod
    def around(
        cls,
        landmarks: np.ndarray,
        image_hw: tuple[int, int],
        geometries: dict[str, CropGeometry],
        margin: float = 0.15,
    ):
        """The smallest region covering every recognizer's crop (plus a jitter margin), inside the photo."""
        corners = []
        for g in geometries.values():
            m = alignment_matrix(np.asarray(landmarks, dtype=np.float64), g)
            inv = np.linalg.inv(to_3x3(m))
            c = g.size / 2.0
            half = c * (1.0 + margin)
            for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                corners.append((inv @ np.array([c + dx * half, c + dy * half, 1.0]))[:2])
        pts = np.array(corners)
        h, w = image_hw
        x0 = int(max(0, math.floor(pts[:, 0].min())))
        y0 = int(max(0, math.floor(pts[:, 1].min())))
        x1 = int(min(w, math.ceil(pts[:, 0].max()) + 1))
        y1 = int(min(h, math.ceil(pts[:, 1].max()) + 1))
        # fade the budget over most of the jitter margin, so the mask has no visible rectangle
        feather = int(round(min(x1 - x0, y1 - y0) * margin / (2 * (1 + margin))))
        return cls(landmarks, (x0, y0, x1, y1), geometries, image_hw=(h, w), feather=feather)

    @property
    def region_hw(self) -> tuple[int, int]:
        return self.box[3] - self.box[1], self.box[2] - self.box[0]

    def edge_weight_map(self) -> np.ndarray:
        """[h,w] float32 weights in [0,1]: 1 inside, ramping to 0 over ``feather`` px at region
        edges that lie inside the photo (edges on the photo border need no fade)."""
        h, w = self.region_hw
        if self.feather <= 0:
            return np.ones((h, w), np.float32)
        x0, y0, x1, y1 = self.box
        img_h, img_w = self.image_hw or (y1, x1)
        step = np.float32(self.feather + 1)

        def ramp(n: int, fade_start: bool, fade_end: bool) -> np.ndarray:
            idx = np.arange(n, dtype=np.float32)
            r = np.ones(n, np.float32)
            if fade_start:
                r = np.minimum(r, (idx + 1) / step)
            if fade_end:
                r = np.minimum(r, (n - idx) / step)
            return r

        wy = ramp(h, y0 > 0, y1 < img_h)
        wx = ramp(w, x0 > 0, x1 < img_w)
        return wy[:, None] * wx[None, :]
