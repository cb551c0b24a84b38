"""A differentiable view of one face in a photo, as each recognizer's aligned crop.

The masks are optimised in PHOTO pixels (the pixels that get saved), not in a 112x112 crop that is
pasted back afterwards: the reference measurements (shared/reference/tip-im.md) show that warping a
crop mask back into the photo and rounding it loses much of its effect. Here the recognizers see the
photo region through the same similarity alignment the detector would give, with bilinear sampling
that mirrors ``cv2.warpAffine`` (pixel centres on integers), so the gradient reaches the photo pixels.

Input diversity is done as *alignment jitter*: a small random similarity (rotation, scale, shift)
of the crop, the physical counterpart of the paper's random resize-and-pad (other detectors and
aligners crop a face slightly differently).

Example:
    >>> view = FaceView.around(landmarks, image_hw=(480, 640), geometries={"mobileface": CropGeometry(112)})  # doctest: +SKIP
    >>> crops = view.crops(region_tensor)                                                  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgecloak.runtime.align import CropGeometry, alignment_matrix


@dataclass(frozen=True)
class Jitter:
    """Bounds of the random alignment jitter used as input diversity."""

    max_rotation_deg: float = 6.0
    max_scale: float = 0.06  # relative, each way
    max_shift: float = 0.04  # fraction of the crop size, each way
    probability: float = 0.7  # chance that a step sees a jittered crop (else the plain alignment)


def _to_3x3(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


class FaceView:
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
            name: (_to_3x3(alignment_matrix(self.landmarks, g)) @ shift)[:2] for name, g in self.geometries.items()
        }

    @classmethod
    def around(
        cls,
        landmarks: np.ndarray,
        image_hw: tuple[int, int],
        geometries: dict[str, CropGeometry],
        margin: float = 0.15,
    ) -> "FaceView":
        """The smallest region covering every recognizer's crop (plus a jitter margin), inside the photo."""
        corners = []
        for g in geometries.values():
            m = alignment_matrix(np.asarray(landmarks, dtype=np.float64), g)
            inv = np.linalg.inv(_to_3x3(m))
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

    def edge_weight(self) -> torch.Tensor:
        """[1,1,h,w] weights in [0,1]: 1 inside, ramping to 0 over ``feather`` px at region edges
        that lie inside the photo (edges on the photo border need no fade)."""
        h, w = self.region_hw
        if self.feather <= 0:
            return torch.ones(1, 1, h, w)
        x0, y0, x1, y1 = self.box
        img_h, img_w = self.image_hw or (y1, x1)

        def ramp(n: int, fade_start: bool, fade_end: bool) -> torch.Tensor:
            idx = torch.arange(n, dtype=torch.float32)
            r = torch.ones(n)
            if fade_start:
                r = torch.minimum(r, (idx + 1) / (self.feather + 1))
            if fade_end:
                r = torch.minimum(r, (n - idx) / (self.feather + 1))
            return r

        wy = ramp(h, y0 > 0, y1 < img_h)
        wx = ramp(w, x0 > 0, x1 < img_w)
        return (wy[:, None] * wx[None, :])[None, None]

    @property
    def region_hw(self) -> tuple[int, int]:
        return self.box[3] - self.box[1], self.box[2] - self.box[0]

    def random_jitter(self, jitter: Jitter, generator: torch.Generator) -> np.ndarray | None:
        """A random 3x3 similarity about the crop centre (in units of the crop size), or None."""
        u = torch.rand(5, generator=generator, dtype=torch.float64).numpy()
        if u[0] >= jitter.probability:
            return None
        angle = math.radians((2 * u[1] - 1) * jitter.max_rotation_deg)
        scale = 1.0 + (2 * u[2] - 1) * jitter.max_scale
        tx, ty = (2 * u[3] - 1) * jitter.max_shift, (2 * u[4] - 1) * jitter.max_shift
        c, s = scale * math.cos(angle), scale * math.sin(angle)
        return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])

    def crops(self, region: torch.Tensor, jitter: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Aligned crops [B,3,S,S] of a region batch [B,3,h,w] for every recognizer, differentiably."""
        return {name: self._crop(region, name, jitter) for name in self.geometries}

    def _crop(self, region: torch.Tensor, name: str, jitter: np.ndarray | None) -> torch.Tensor:
        size = self.geometries[name].size
        m = _to_3x3(self.matrices[name])
        if jitter is not None:
            # jitter acts in normalised crop coordinates centred on the crop
            to_unit = np.array([[1 / size, 0, -0.5], [0, 1 / size, -0.5], [0, 0, 1.0]])
            m = np.linalg.inv(to_unit) @ jitter @ to_unit @ m
        inv = np.linalg.inv(m)
        src = region
        # Photo pixels per crop pixel: when a face is much larger than the crop, bilinear sampling
        # would read 4 of every f*f pixels; average-pool first so every pixel gets gradient.
        factor = int(math.floor(math.sqrt(abs(np.linalg.det(inv[:2, :2])))))
        if factor >= 2:
            src = F.avg_pool2d(region, factor, stride=factor, ceil_mode=True)
            pool = np.array([[1 / factor, 0, 0.5 / factor - 0.5], [0, 1 / factor, 0.5 / factor - 0.5], [0, 0, 1.0]])
            inv = pool @ inv
        h, w = src.shape[-2:]
        # crop pixel centre (u, v) -> source pixel (x, y) -> grid_sample's [-1, 1] (align_corners=False)
        to_norm = np.array([[2.0 / w, 0, 1.0 / w - 1], [0, 2.0 / h, 1.0 / h - 1], [0, 0, 1.0]])
        theta = (to_norm @ inv)[:2]
        uv = np.arange(size, dtype=np.float64)
        uu, vv = np.meshgrid(uv, uv)
        pix = np.stack([uu, vv, np.ones_like(uu)], axis=-1)  # S,S,3
        grid = torch.as_tensor(pix @ theta.T, dtype=region.dtype, device=region.device)
        grid = grid.unsqueeze(0).expand(src.shape[0], -1, -1, -1)
        return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
