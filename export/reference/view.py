"""A differentiable view of one face in a photo, as each recognizer's aligned crop.

The region geometry (box, matrices, budget feathering) is ``edgecloak.runtime.face_region``'s,
shared with the runtime. Here the recognizers see the
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


import numpy as np
import torch
import torch.nn.functional as F

from edgecloak.runtime.align import CropGeometry  # noqa: F401  (re-exported for callers)
from edgecloak.runtime.config import Jitter
from edgecloak.runtime.diversity import sample_jitter
from edgecloak.runtime.face_region import FaceRegion, to_3x3
from edgecloak.runtime.warp import crop_to_src_matrix


class FaceView(FaceRegion):
    """A ``FaceRegion`` seen through torch: differentiable crops and the budget weight as a tensor."""

    def edge_weight(self) -> torch.Tensor:
        """[1,1,h,w] budget weights (see ``FaceRegion.edge_weight_map``)."""
        return torch.from_numpy(self.edge_weight_map())[None, None]

    def random_jitter(self, jitter: Jitter, rng: np.random.Generator) -> np.ndarray | None:
        """A random 3x3 similarity about the crop centre (in units of the crop size), or None."""
        return sample_jitter(jitter, rng)

    def crops(self, region: torch.Tensor, jitter: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Aligned crops [B,3,S,S] of a region batch [B,3,h,w] for every recognizer, differentiably."""
        return {name: self._crop(region, name, jitter) for name in self.geometries}

    def _crop(self, region: torch.Tensor, name: str, jitter: np.ndarray | None) -> torch.Tensor:
        size = self.geometries[name].size
        # the same crop -> (pooled) source matrix the runtime's numpy sampler uses
        inv, factor = crop_to_src_matrix(self.matrices[name], size, jitter)
        inv = to_3x3(inv)
        # Photo pixels per crop pixel: when a face is much larger than the crop, bilinear sampling
        # would read 4 of every f*f pixels; average-pool first so every pixel gets gradient.
        src = F.avg_pool2d(region, factor, stride=factor, ceil_mode=True) if factor >= 2 else region
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
