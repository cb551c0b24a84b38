"""TIP-IM's naturalness term: a biased MMD estimate on flattened raw pixels.

As in the paper's public code: a sum of Gaussian kernels over 19 bandwidths from 1e-6 to 1e6,
between a BATCH of protected images and the batch of originals. With one photo the batch is filled
with paired augmented copies (same random shift/flip applied to the protected and original
region), see ``paired_augment``.

Example:
    >>> x = torch.rand(4, 12); mmd(x, x).item() == 0.0
    True
"""

from __future__ import annotations

import numpy as np
import torch

from edgecloak.runtime.diversity import sample_augmentations

from edgecloak.runtime.mmd import BANDWIDTHS  # noqa: E402  (one list for both engines)


def _kernel_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d2 = torch.cdist(a, b).pow(2)
    betas = 1.0 / (2.0 * torch.tensor(BANDWIDTHS, dtype=a.dtype, device=a.device))
    return torch.exp(-betas[:, None, None] * d2[None]).sum(0)


def mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased MMD^2 between two batches of flattened samples [B, n] (pixels on the 0..1 scale)."""
    value = _kernel_sum(x, x).mean() + _kernel_sum(y, y).mean() - 2 * _kernel_sum(x, y).mean()
    # Zero (and a zero gradient) where the estimate is <= 0, e.g. at x == y: clamp_min would pass
    # the gradient at exactly 0, i.e. rounding noise whose sign then moves pixels.
    return torch.where(value > 0, value, torch.zeros_like(value))


def paired_augment(x: torch.Tensor, y: torch.Tensor, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill a batch from one pair [1,3,h,w]: the same random roll (+-2 px) and flip on both.

    The draws come from ``runtime.diversity.sample_augmentations`` (shared with the runtime).
    """
    xs, ys = [x], [y]
    for dx, dy, flip in sample_augmentations(batch, rng):
        xa, ya = torch.roll(x, (dy, dx), (2, 3)), torch.roll(y, (dy, dx), (2, 3))
        if flip:
            xa, ya = xa.flip(3), ya.flip(3)
        xs.append(xa)
        ys.append(ya)
    return torch.cat(xs).flatten(1), torch.cat(ys).flatten(1)
