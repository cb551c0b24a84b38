"""The shared machinery of iterative L_inf/L2 face attacks (torch autograd reference).

Like torchattacks' ``Attack``: the base class owns what every attack needs (the eps-ball
projection, uint8 quantisation, momentum bookkeeping, the step rule, input diversity, the ensemble
embedding); subclasses such as ``TIPIM`` only write their loop body.

All pixels are on the 0..255 scale. The optimised variable is a photo REGION ``[1,3,h,w]`` and the
recognizers see it through a ``FaceView`` (differentiable alignment), see ``view.py``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from edgecloak.export.recognizers import Recognizer
from edgecloak.runtime.config import AttackConfig, Jitter  # noqa: F401  (re-exported)

from .view import FaceView


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round to integers in the forward pass, identity in the backward (straight-through).

    The saved photo is uint8; optimising through the rounding keeps the mask effective after it.
    """
    return x + (x.round() - x).detach()


class IterativeAttack:
    """Base of the attacks: subclasses implement ``run``; helpers here are shared."""

    def __init__(self, recognizers: Sequence[Recognizer], config: AttackConfig | None = None):
        if not recognizers:
            raise ValueError("an attack needs at least one surrogate recognizer")
        self.recognizers = list(recognizers)
        self.config = config or AttackConfig()
        # Equal ensemble weights: each surrogate's loss is on the same (cosine) scale.
        self.weights = {r.id: 1.0 / len(self.recognizers) for r in self.recognizers}

    # -- geometry of the budget -------------------------------------------------------------
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

    # -- the ensemble ----------------------------------------------------------------------
    def embed(self, region: torch.Tensor, view: FaceView, jitter=None) -> dict[str, torch.Tensor]:
        """Unit embeddings {recognizer id: [B,D]} of a region batch seen through the view."""
        crops = view.crops(region, jitter)
        return {r.id: r(crops[r.id]) for r in self.recognizers}

    def generator(self) -> np.random.Generator:
        """The run's random stream (numpy, shared with the runtime: see ``runtime.diversity``)."""
        return np.random.default_rng(self.config.seed)
