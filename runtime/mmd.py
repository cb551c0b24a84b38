"""TIP-IM's naturalness term in numpy: the MMD value and its gradient, written out by hand.

As in the paper's public code (and the torch oracle, ``edgecloak.export.reference.oracle``, tests
only): a biased MMD^2 estimate with a sum of Gaussian kernels over 19 bandwidths, between a batch
of protected copies and the batch of originals (flattened pixels on the 0..1 scale). With one
photo the batch is filled with paired augmented copies (the same roll and flip on both), drawn by
``runtime.diversity``.

With ``W[i,j] = sum_b beta_b exp(-beta_b ||a_i - c_j||^2)`` the gradient of ``mean k(a_i, c_j)``
with respect to ``a_i`` is ``-2 / B^2 * sum_j W[i,j] (a_i - c_j)``, which gives the three terms below.

Example:
    >>> x = np.random.default_rng(0).random((1, 3, 8, 8)) * 255
    >>> value, grad = mmd_gradient(x, x, [(1, 0, True)])
    >>> value, float(np.abs(grad).max())
    (0.0, 0.0)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

BANDWIDTHS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1, 5, 10, 15, 20, 25, 30, 35, 100, 1e3, 1e4, 1e5, 1e6)
_BETAS = 1.0 / (2.0 * np.asarray(BANDWIDTHS, dtype=np.float64))


def _augment(x: np.ndarray, augmentations: Sequence[tuple[int, int, bool]]) -> np.ndarray:
    """[B, n] flattened copies of x [1,3,h,w]: the original, then each (dx, dy, flip)."""
    copies = [x[0]]
    for dx, dy, flip in augmentations:
        a = np.roll(x[0], (dy, dx), axis=(1, 2))
        copies.append(a[:, :, ::-1] if flip else a)
    return np.stack(copies).reshape(len(copies), -1)


def _augment_adjoint(g: np.ndarray, shape: tuple[int, ...], augmentations: Sequence[tuple[int, int, bool]]) -> np.ndarray:
    """Sum the per-copy gradients [B, n] back onto x [1,3,h,w] (undo flip, then roll back)."""
    copies = g.reshape(len(augmentations) + 1, *shape[1:])
    total = copies[0].copy()
    for (dx, dy, flip), c in zip(augmentations, copies[1:]):
        total += np.roll(c[:, :, ::-1] if flip else c, (-dy, -dx), axis=(1, 2))
    return total[None]


def _kernel_weights(a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum_b exp(-beta_b d2), sum_b beta_b exp(-beta_b d2)) for all pairs, [B, B] each."""
    d2 = np.maximum((a * a).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * a @ c.T, 0.0)
    e = np.exp(-_BETAS[:, None, None] * d2[None])
    return e.sum(0), (_BETAS[:, None, None] * e).sum(0)


def mmd_gradient(
    x: np.ndarray, x0: np.ndarray, augmentations: Sequence[tuple[int, int, bool]], weight: float = 1.0
) -> tuple[float, np.ndarray]:
    """MMD^2 between augmented copies of x and x0 ([1,3,h,w], 0..255) and its gradient w.r.t. x.

    Computed in float64 (the distances are sums over ~10^5 pixels); the gradient is float32 and on
    the 0..255 scale of x, multiplied by ``weight`` (gamma) before rounding to float32, as the
    torch oracle does. Where the estimate clamps at 0 the gradient is 0, as in the oracle.
    """
    a = _augment(x.astype(np.float64) / 255.0, augmentations)
    c = _augment(x0.astype(np.float64) / 255.0, augmentations)
    b = a.shape[0]
    k_aa, w_aa = _kernel_weights(a, a)
    k_cc, _ = _kernel_weights(c, c)
    k_ac, w_ac = _kernel_weights(a, c)
    value = k_aa.mean() + k_cc.mean() - 2.0 * k_ac.mean()
    if value <= 0.0:
        return 0.0, np.zeros(x.shape, np.float32)
    # d/da_i of mean k(a,a): both arguments move -> factor 2; of -2 mean k(a,c): one argument
    grad_aa = (-4.0 / b**2) * (w_aa.sum(1)[:, None] * a - w_aa @ a)
    grad_ac = (4.0 / b**2) * (w_ac.sum(1)[:, None] * a - w_ac @ c)
    grad = _augment_adjoint(weight * (grad_aa + grad_ac), x.shape, augmentations) / 255.0
    return float(value), grad.astype(np.float32)
