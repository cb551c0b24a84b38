"""TIP-IM: targeted identity-protection iterative method (Yang et al., ICCV 2021), torch reference.

Per iteration, for EACH of the K targets: the gradient of the identity loss
``L_k = D(x, t_k) - D(x, r)`` (+ gamma * MMD), normalised by its mean absolute value, updates that
target's momentum and gives a candidate image; greedy insertion then keeps the candidate with the
best gain ``G = log(1 + max_t exp(||f(x)-f(r)|| - ||f(x)-f(t)||))`` and its momentum.

With unit-norm embeddings ``L_k = 2 <f(x), f(r) - f(t_k)> + const`` is linear in f(x), so the K
gradients are vector-Jacobian products with K cotangents: computed here as one backward over a
batch of K copies, identical in value to the paper code's K separate backward passes.

Example:
    >>> attack = TIPIM([Recognizer.load("mobileface")], TIPIMConfig(steps=50))   # doctest: +SKIP
    >>> result = attack.run(region, view, targets)                               # doctest: +SKIP
    >>> targets.identities[result.target_index]                                  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from edgecloak.runtime.config import TIPIMConfig

from .base import IterativeAttack, ste_round
from .mmd import mmd, paired_augment
from .targets import TargetBank
from .view import FaceView


@dataclass
class AttackResult:
    """The protected region (float, on the uint8 grid) and what the attack settled on."""

    region: torch.Tensor
    target_index: int
    gains: list[float]


class TIPIM(IterativeAttack):
    """TIP-IM over an ensemble of surrogate recognizers."""

    config: TIPIMConfig

    def __init__(self, recognizers, config: TIPIMConfig | None = None, per_target_passes: bool = False):
        """``per_target_passes``: compute the K gradients as the paper's code does, one forward and
        one backward per target (same values, K times the passes): the speed baseline."""
        super().__init__(recognizers, config or TIPIMConfig())
        self.per_target_passes = per_target_passes

    def _cotangents(self, real: dict[str, torch.Tensor], targets: TargetBank) -> list[torch.Tensor]:
        """d L_k / d f_s(x) = 2 w_s (f_s(r) - f_s(t_k)), one row per target: [K, D_s]."""
        return [2.0 * self.weights[r.id] * (real[r.id] - targets.embeddings[r.id]) for r in self.recognizers]

    def identity_gradients(self, x: torch.Tensor, view: FaceView, cotangents: list[torch.Tensor], jitter=None) -> torch.Tensor:
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

    def gain(self, emb: dict[str, torch.Tensor], real: dict[str, torch.Tensor], targets: TargetBank) -> torch.Tensor:
        """Per-image [B, K] ensemble-mean of ||f(x)-f(r)|| - ||f(x)-f(t)|| (unsquared L2)."""
        total = 0.0
        for r in self.recognizers:
            d_real = (emb[r.id] - real[r.id]).norm(dim=1, keepdim=True)  # B,1
            d_targets = torch.cdist(emb[r.id], targets.embeddings[r.id])  # B,K
            total = total + self.weights[r.id] * (d_real - d_targets)
        return total

    @torch.no_grad()
    def fooled(self, x: torch.Tensor, view: FaceView, real: dict[str, torch.Tensor], targets: TargetBank,
               margin: float) -> bool:
        """Is x [1,3,h,w] closer to its best target than to the original by ``margin`` (cosine) for every
        surrogate? (``TIPIMConfig.stop_margin``; the runtime's ``fooled`` is the same test)"""
        emb = self.embed(x, view)
        t = int(self.gain(emb, real, targets)[0].argmax())
        return all(float(emb[r.id][0] @ targets.embeddings[r.id][t]) - float(emb[r.id][0] @ real[r.id][0]) > margin
                   for r in self.recognizers)

    def run(
        self,
        region: torch.Tensor,
        view: FaceView,
        targets: TargetBank,
        start: torch.Tensor | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> AttackResult:
        """Protect one face region [1,3,h,w] (0..255 float, the ORIGINAL pixels).

        ``start`` is where to begin (default: the original); used when an earlier face of the same
        photo already changed pixels of this region. The budget is always around the original.
        ``on_step`` is called with the step index (for progress bars).
        """
        cfg = self.config
        gen = self.generator()
        x0 = region.detach()
        with torch.no_grad():
            real = self.embed(x0, view)
        cotangents = self._cotangents(real, targets)
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
                cand_gain = F.softplus(self.gain(self.embed(candidates.round(), view), real, targets).amax(dim=1))
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
            if cfg.stop_margin is not None and self.fooled(candidates[best : best + 1].round(), view, real, targets,
                                                           cfg.stop_margin):
                break
        x = self.finalise(best_x if cfg.keep_best else x, x0, limit)
        with torch.no_grad():
            target_index = int(self.gain(self.embed(x, view), real, targets)[0].argmax())
        return AttackResult(region=x, target_index=target_index, gains=gains)
