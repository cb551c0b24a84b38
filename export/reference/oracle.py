"""The paper-style TIP-IM in torch autograd: the test oracle the runtime loop is checked against, and
``edgecloak bench``'s baseline rows; no product path imports it.

TIP-IM (Yang et al., ICCV 2021), one attack that reads top to bottom (torchattacks style). Per
iteration, for EACH of the K targets: the gradient of the identity loss
``L_k = D(x, t_k) - D(x, r)`` (+ gamma * MMD), normalised by its mean absolute value, updates that
target's momentum and gives a candidate image; greedy insertion then keeps the candidate with the
best gain ``G = log(1 + max_t exp(||f(x)-f(r)|| - ||f(x)-f(t)||))`` and its momentum.

With unit-norm embeddings ``L_k = 2 <f(x), f(r) - f(t_k)> + const`` is linear in f(x), so the K
gradients are vector-Jacobian products with K cotangents: computed as one backward over a batch of
K copies, identical in value to the paper code's K separate backward passes
(``per_target_passes=True``, the bench's speed baseline).

All pixels are on the 0..255 scale. The optimised variable is a photo REGION ``[1,3,h,w]`` that
the recognizers see through a ``FaceView`` (differentiable alignment, ``view.py``). Settings are
the runtime's ``TIPIMConfig``; the random draws come from ``runtime.diversity`` in the runtime's
order, so the same seed gives the runtime loop (``edgecloak.runtime.tipim``) the same trajectory.

Example:
    >>> attack = TIPIM([Recognizer.load("mobileface")], TIPIMConfig(steps=50))   # doctest: +SKIP
    >>> result = attack.run(region, view, targets)    # targets: a (numpy) TargetBank  # doctest: +SKIP
    >>> targets.identities[result.target_index]                                  # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgecloak.export.recognizers import Recognizer
from edgecloak.runtime.config import TIPIMConfig
from edgecloak.runtime.diversity import sample_augmentations
from edgecloak.runtime.mmd import BANDWIDTHS  # one list for both loops
from edgecloak.runtime.protector import FaceResult
from edgecloak.runtime.targets import TargetBank

from .targets import geometries_of
from .view import FaceView

Embeddings = dict[str, torch.Tensor]  # recognizer id -> [B, D] unit embeddings


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round to integers in the forward pass, identity in the backward (straight-through).

    The saved photo is uint8; optimising through the rounding keeps the mask effective after it.

    Example:
        >>> ste_round(torch.tensor([1.4, 2.6])).tolist()
        [1.0, 3.0]
    """
    return x + (x.round() - x).detach()


# -- the naturalness term: a biased MMD estimate on flattened raw pixels, as in the public code ----

def _kernel_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of Gaussian kernels over the 19 bandwidths, [len(a), len(b)]."""
    d2 = torch.cdist(a, b).pow(2)
    betas = 1.0 / (2.0 * torch.tensor(BANDWIDTHS, dtype=a.dtype, device=a.device))
    return torch.exp(-betas[:, None, None] * d2[None]).sum(0)


def mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased MMD^2 between two batches of flattened samples [B, n] (pixels on the 0..1 scale).

    Example:
        >>> mmd(torch.zeros(2, 3), torch.zeros(2, 3)).item()
        0.0
    """
    value = _kernel_sum(x, x).mean() + _kernel_sum(y, y).mean() - 2 * _kernel_sum(x, y).mean()
    # Zero (and a zero gradient) where the estimate is <= 0, e.g. at x == y: clamp_min would pass
    # the gradient at exactly 0, i.e. rounding noise whose sign then moves pixels.
    return torch.where(value > 0, value, torch.zeros_like(value))


def paired_augment(x: torch.Tensor, y: torch.Tensor, batch: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill an MMD batch of ``batch`` rows from one pair [1,3,h,w] (the pair itself, then copies with the
    same random roll (+-2 px) and flip on both), flattened.

    The draws come from ``runtime.diversity.sample_augmentations`` (the runtime's, in its order).

    Example:
        >>> xa, ya = paired_augment(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4), 2, np.random.default_rng(0))
        >>> tuple(xa.shape), tuple(ya.shape)
        ((2, 48), (2, 48))
    """
    xs, ys = [x], [y]
    for dx, dy, flip in sample_augmentations(batch, rng):
        xa, ya = torch.roll(x, (dy, dx), (2, 3)), torch.roll(y, (dy, dx), (2, 3))
        if flip:
            xa, ya = xa.flip(3), ya.flip(3)
        xs.append(xa)
        ys.append(ya)
    return torch.cat(xs).flatten(1), torch.cat(ys).flatten(1)


# -- the attack ----------------------------------------------------------------------------------

@dataclass
class OracleResult:
    """The protected region [1,3,h,w] (float, on the uint8 grid) and what the loop settled on."""

    region: torch.Tensor
    target_index: int
    gains: list[float]


class TIPIM:
    """TIP-IM over an ensemble of torch surrogate recognizers."""

    def __init__(self, recognizers: Sequence[Recognizer], config: TIPIMConfig | None = None,
                 per_target_passes: bool = False):
        """``per_target_passes``: compute the K gradients as the paper's code does, one forward and
        one backward per target (same values, K times the passes): the bench's baseline."""
        if not recognizers:
            raise ValueError("TIP-IM needs at least one surrogate recognizer")
        self.recognizers = list(recognizers)
        self.config = config or TIPIMConfig()
        self.per_target_passes = per_target_passes
        # Equal ensemble weights: each surrogate's loss is on the same (cosine) scale.
        self.weights = {r.id: 1.0 / len(self.recognizers) for r in self.recognizers}

    # -- the budget and the step rule --------------------------------------------------------
    def project(self, x: torch.Tensor, x0: torch.Tensor, limit: torch.Tensor | None = None) -> torch.Tensor:
        """Into the eps-ball around x0 (L_inf always; L2 too when eps_l2 is set) and [0, 255].

        ``limit`` is an optional per-pixel L_inf bound (<= eps), broadcast over x. The L_inf part is
        one clamp to ``[max(x0 - limit, 0), min(x0 + limit, 255)]`` (the runtime does the same).
        """
        cfg = self.config
        if cfg.eps_l2 is not None:
            delta = x - x0
            norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            x = x0 + delta * (cfg.eps_l2 / norms).clamp(max=1.0).view(-1, 1, 1, 1)
        bound = torch.as_tensor(cfg.eps if limit is None else limit)
        return torch.clamp(x, (x0 - bound).clamp_min(0.0), (x0 + bound).clamp_max(255.0))

    def finalise(self, x: torch.Tensor, x0: torch.Tensor, limit: torch.Tensor | None = None) -> torch.Tensor:
        """Round to the uint8 grid and re-clip so |out - x0| <= floor(bound) holds exactly per pixel."""
        bound = torch.as_tensor(float(math.floor(self.config.eps)) if limit is None else limit.floor())
        return torch.minimum(torch.maximum(x.round(), x0 - bound), x0 + bound).clamp(0.0, 255.0)

    @staticmethod
    def normalise(g: torch.Tensor) -> torch.Tensor:
        """Divide each gradient in the batch by its mean absolute value (MI-FGSM)."""
        scale = g.abs().flatten(1).mean(dim=1).clamp_min(1e-12)
        return g / scale.view(-1, *([1] * (g.dim() - 1)))

    def step(self, x: torch.Tensor, momentum: torch.Tensor) -> torch.Tensor:
        """One descent step of size alpha along the momentum: sign (L_inf) or L2-normalised (L2)."""
        if self.config.norm == "linf":
            return x - self.config.alpha * momentum.sign()
        flat = momentum.flatten(1)
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        # alpha per pixel on average (RMS), so the L2 and L_inf variants move comparable amounts
        return x - self.config.alpha * math.sqrt(flat.shape[1]) * unit.view_as(momentum)

    # -- the ensemble ------------------------------------------------------------------------
    def embed(self, region: torch.Tensor, view: FaceView, jitter: np.ndarray | None = None) -> Embeddings:
        """Unit embeddings {recognizer id: [B,D]} of a region batch seen through the view."""
        crops = view.crops(region, jitter)
        return {r.id: r(crops[r.id]) for r in self.recognizers}

    def cotangents(self, real: Embeddings, targets: Embeddings) -> list[torch.Tensor]:
        """d L_k / d f_s(x) = 2 w_s (f_s(r) - f_s(t_k)), one row per target: [K, D_s] per surrogate."""
        return [2.0 * self.weights[r.id] * (real[r.id] - targets[r.id]) for r in self.recognizers]

    def identity_gradients(self, x: torch.Tensor, view: FaceView, cotangents: list[torch.Tensor],
                           jitter: np.ndarray | None = None) -> torch.Tensor:
        """The K identity-loss gradients [K,3,h,w] at x [1,3,h,w], one per target cotangent.

        K copies of x in one batch: one backward of sum_k <f(x_k), c_k> yields all K
        vector-Jacobian products (measured faster on CPU than a vmapped backward).
        """
        k = cotangents[0].shape[0]
        if self.per_target_passes:
            grads = []
            for i in range(k):
                x_one = x.detach().clone().requires_grad_(True)
                emb = self.embed(ste_round(x_one), view, jitter)
                objective = sum((emb[r.id] * c[i : i + 1]).sum() for r, c in zip(self.recognizers, cotangents))
                grads.append(torch.autograd.grad(objective, x_one)[0])
            return torch.cat(grads)
        x_var = x.detach().repeat(k, 1, 1, 1).requires_grad_(True)
        emb = self.embed(ste_round(x_var), view, jitter)
        objective = sum((emb[r.id] * c).sum() for r, c in zip(self.recognizers, cotangents))
        return torch.autograd.grad(objective, x_var)[0]

    def gain(self, emb: Embeddings, real: Embeddings, targets: Embeddings) -> torch.Tensor:
        """Per-image [B, K] ensemble-mean of ||f(x)-f(r)|| - ||f(x)-f(t)|| (unsquared L2)."""
        total = 0.0
        for r in self.recognizers:
            d_real = (emb[r.id] - real[r.id]).norm(dim=1, keepdim=True)  # B,1
            d_targets = torch.cdist(emb[r.id], targets[r.id])  # B,K
            total = total + self.weights[r.id] * (d_real - d_targets)
        return total

    @torch.no_grad()
    def fooled(self, x: torch.Tensor, view: FaceView, real: Embeddings, targets: Embeddings, margin: float) -> bool:
        """Is x [1,3,h,w] closer to its best target than to the original by ``margin`` (cosine) for every
        surrogate? (``TIPIMConfig.stop_margin``; the runtime's ``fooled`` is the same test)"""
        emb = self.embed(x, view)
        t = int(self.gain(emb, real, targets)[0].argmax())
        return all(float(emb[r.id][0] @ targets[r.id][t]) - float(emb[r.id][0] @ real[r.id][0]) > margin
                   for r in self.recognizers)

    # -- the loop ----------------------------------------------------------------------------
    def run(
        self,
        region: torch.Tensor,
        view: FaceView,
        targets: TargetBank,
        start: torch.Tensor | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> OracleResult:
        """Protect one face region [1,3,h,w] (0..255 float, the ORIGINAL pixels).

        ``targets`` holds numpy embeddings (as every ``TargetBank``); they become torch tensors here.
        ``start`` is where to begin (default: the original); the budget is always around the
        original. ``on_step`` is called with the step count (for timing and progress bars).
        """
        cfg = self.config
        gen = np.random.default_rng(cfg.seed)  # the runtime's stream (``runtime.diversity``)
        bank = {k: torch.from_numpy(v) for k, v in targets.embeddings.items()}
        x0 = region.detach()
        with torch.no_grad():
            real = self.embed(x0, view)
        cotangents = self.cotangents(real, bank)
        k = targets.size
        limit = cfg.eps * view.edge_weight()  # the budget fades out towards the region's edge
        x = x0.clone() if start is None else self.project(start.detach(), x0, limit)
        momentum = torch.zeros_like(x0)
        gains: list[float] = []
        best_x, best_gain = x, float("-inf")
        held, winners = 0, []  # the target held between re-scorings (TIPIMConfig.rescores)
        for step_index in range(cfg.steps):
            rescore = cfg.rescores(step_index, winners)
            rows = list(range(k)) if rescore else [held]
            jitter = view.random_jitter(cfg.diversity, gen) if cfg.diversity else None
            grads = self.identity_gradients(x, view, [c[rows] for c in cotangents], jitter)
            if cfg.gamma > 0:
                # float64: the estimate is a small difference of sums over ~10^5 pixels (float32
                # loses 3e-3 of the gradient to cancellation); the runtime computes it the same way
                x_one = x.detach().double().requires_grad_(True)
                xa, ya = paired_augment(x_one / 255.0, x0.double() / 255.0, cfg.mmd_batch, gen)
                grads = grads + torch.autograd.grad(cfg.gamma * mmd(xa, ya), x_one)[0].float()
            momenta = cfg.mu * momentum + self.normalise(grads)  # n,3,h,w
            candidates = self.project(self.step(x.expand(len(rows), -1, -1, -1), momenta), x0, limit)
            with torch.no_grad():
                cand_gain = F.softplus(self.gain(self.embed(candidates.round(), view), real, bank).amax(dim=1))
            best = int(cand_gain.argmax())
            if rescore:
                held = rows[best]
                winners.append(held)
            gains.append(float(cand_gain[best]))
            x, momentum = candidates[best : best + 1].detach(), momenta[best : best + 1].detach()
            if gains[-1] > best_gain:
                best_x, best_gain = x, gains[-1]
            if on_step is not None:
                on_step(len(gains))
            if cfg.stop_margin is not None and self.fooled(candidates[best : best + 1].round(), view, real, bank,
                                                           cfg.stop_margin):
                break
        x = self.finalise(best_x if cfg.keep_best else x, x0, limit)
        with torch.no_grad():
            target_index = int(self.gain(self.embed(x, view), real, bank)[0].argmax())
        return OracleResult(region=x, target_index=target_index, gains=gains)


def protect_face(attack: TIPIM, image: np.ndarray, landmarks: np.ndarray, targets: TargetBank,
                 on_step: Callable[[int], None] | None = None) -> FaceResult:
    """Run the oracle on one face of an RGB uint8 photo, starting from the original pixels.

    Returns what the runtime's ``RuntimeProtector.protect_face`` returns for that face (a
    ``FaceResult``: box, protected region HxWx3 uint8, target index, steps, gains), so the bench and
    the drift script time and compare both on equal terms.

    Example:
        >>> protect_face(TIPIM([rec]), image, face.landmarks, bank).target_index   # doctest: +SKIP
        3
    """
    view = FaceView.around(landmarks, image.shape[:2], geometries_of(attack.recognizers))
    x0, y0, x1, y1 = view.box
    region = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    result = attack.run(region, view, targets, on_step=on_step)
    return FaceResult(box=tuple(int(v) for v in view.box), region=result.region[0].permute(1, 2, 0).numpy().astype(np.uint8),
                      target_index=result.target_index, steps=len(result.gains), gains=result.gains)
