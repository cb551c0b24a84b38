"""TIP-IM settings: the one place a loop setting is defined.

``edgecloak.runtime.tipim.RuntimeTIPIM`` (the loop, on any engine) reads these fields, so a preset
means the same thing on a workstation and on a device; presets and bundles store them as JSON
(``to_dict`` / ``from_dict``), and the CLI builds its flags from the fields' metadata. Pure Python
(no numpy needed) so it is cheap to import anywhere.

Example:
    >>> cfg = TIPIMConfig(steps=20)
    >>> (cfg.eps, cfg.alpha, cfg.steps, cfg.gamma)
    (12.0, 1.5, 20, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal


def _flag(help: str, switch_off: bool = False) -> dict[str, Any]:
    """Field metadata: the field is a command-line flag with this help (``edgecloak.cli.settings``
    builds the flags from it, so a new setting is written here and nowhere else). ``switch_off``:
    the flag is ``--no-<name>`` and sets the field to None."""
    return {"cli_help": help, "cli_switch_off": switch_off}


@dataclass(frozen=True)
class Jitter:
    """Bounds of the random alignment jitter used as input diversity."""

    max_rotation_deg: float = 6.0
    max_scale: float = 0.06  # relative, each way
    max_shift: float = 0.04  # fraction of the crop size, each way
    probability: float = 0.7  # chance that a step sees a jittered crop (else the plain alignment)


@dataclass
class AttackConfig:
    """Budget and step settings shared by the iterative attacks.

    Defaults follow the TIP-IM paper: eps 12 on 0..255 (L_inf), N 50 iterations, alpha 1.5, mu 1.0.
    (The public code instead uses N 100 and alpha 1.5*eps/N; set them here to reproduce it.)
    """

    eps: float = field(default=12.0, metadata=_flag("L_inf budget on 0..255 (paper: 12)"))
    steps: int = field(default=50, metadata=_flag("iterations N (paper: 50)"))
    alpha: float = field(default=1.5, metadata=_flag("step size (paper: 1.5)"))
    mu: float = field(default=1.0, metadata=_flag("momentum decay (paper: 1.0)"))
    norm: Literal["linf", "l2"] = field(default="linf", metadata=_flag("step rule (default linf)"))
    # Optional extra L2 radius (0..255 units over the whole region) for the L2 variant; the L_inf
    # ball always applies, so the pixel-wise guarantee of the product holds in both variants.
    eps_l2: float | None = None
    diversity: Jitter | None = field(default_factory=Jitter, metadata=_flag(
        "turn off input diversity (alignment jitter)", switch_off=True))
    seed: int = field(default=0, metadata=_flag("random seed of the input diversity (default 0)"))

    def __post_init__(self) -> None:
        for f in fields(self):  # nan passes every comparison below, and inf makes no sense anywhere
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        if not (0 < self.eps <= 64):
            raise ValueError(f"eps must be in (0, 64] on the 0..255 scale, got {self.eps}")
        if self.steps < 1 or self.alpha <= 0:
            raise ValueError("steps must be >= 1 and alpha > 0")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if isinstance(self.diversity, dict):  # from JSON (a bundle preset)
            self.diversity = Jitter(**self.diversity)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (``diversity`` as a dict or None)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AttackConfig":
        """Settings from JSON; unknown keys are an error (a typo must not silently use a default)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
        return cls(**data)


@dataclass
class TIPIMConfig(AttackConfig):
    """TIP-IM settings. Paper defaults: eps 12, N 50, alpha 1.5, mu 1.0, K 10 targets, gamma 0.

    gamma weighs the MMD naturalness term (public code default 0 = off; users found 0.1 already
    hurts protection); ``mmd_batch`` is the batch of paired augmented copies it is measured on.
    """

    gamma: float = field(default=0.0, metadata=_flag("MMD naturalness weight (public code: 0)"))
    mmd_batch: int = 8
    # Return the iterate with the best gain rather than the last one: with sign steps of 1.5
    # inside an eps of 12 the iterate saturates after ~8 steps and then wanders along the
    # boundary; the best one seen costs nothing extra (its gain is computed anyway).
    keep_best: bool = True
    # Early stop: end the loop once the chosen candidate is, for EVERY surrogate, closer to its target
    # than to the original face by this cosine margin (plain alignment, uint8-rounded). None: run
    # all N steps (the paper; the default). Measured (edge, N 32, 10-frame clip, 2-core CPU): stop
    # margin 0.1 ran 10 steps instead of 32, but the SDK's self-check, which re-detects the face
    # (the mask shifts MTCNN's landmarks), then passed 2 frames of 10 instead of 10 of 10; 0.2
    # passed none. A stop judged at the loop's own alignment is too optimistic; off by default.
    stop_margin: float | None = field(default=None, metadata=_flag(
        "stop early once every surrogate is fooled by this cosine margin (default: all steps)"))
    # Cheaper greedy insertion: score all K candidates only every ``rescore_every`` steps (1: every
    # step, the paper) and, with ``settle_after``, never again once the same target has won that
    # many re-scorings in a row. Between re-scorings the loop steps towards the target it holds:
    # one gradient pulled back and one candidate embedded instead of K (the gradient graph itself
    # still takes K cotangents). Measured in ``edgecloak calibrate presets``.
    rescore_every: int = field(default=1, metadata=_flag(
        "score all K target candidates only every R steps (default 1: every step)"))
    settle_after: int | None = field(default=None, metadata=_flag(
        "stop re-scoring once one target won this many re-scorings in a row (default: never)"))

    # Transfer to recognizers the loop never optimised on (off by default: the paper's loop). Sigmas
    # in pixels of a 112-px aligned face (``runtime.smoothing``); each measured on leave-one-family-out
    # transfer by ``edgecloak eval --cross-family`` (docs/transfer.md).
    ti_sigma: float = field(default=0.0, metadata=_flag(
        "translation-invariant gradient smoothing: Gaussian sigma in pixels of a 112-px face (default 0: off)"))
    smooth_probability: float = field(default=0.0, metadata=_flag(
        "share of steps whose surrogates see a Gaussian-smoothed copy of the image (default 0: never)"))
    smooth_sigma: float = 1.5
    # input diversity beyond the alignment jitter: the surrogates see the face mirrored (the crop
    # flipped left-right, its gradient flipped back by the warp's adjoint) on this share of steps
    mirror_probability: float = field(default=0.0, metadata=_flag(
        "share of gradient steps whose surrogates see the face mirrored left-right (default 0: never)"))
    # input diversity in resolution: on this share of gradient steps the surrogates see the face
    # rendered at a random scale in [resize_min_scale, 1) of their input side and resized back up,
    # as a recognizer that works on smaller faces (or a downscaled upload) would see it
    resize_probability: float = field(default=0.0, metadata=_flag(
        "share of gradient steps whose surrogates see the face at a random lower resolution (default 0: never)"))
    resize_min_scale: float = 0.5
    # DFANet-style surrogate model augmentation: every gradient step sees each surrogate with this
    # share of its convolutions' outputs dropped (a fresh mask per step and surrogate, fed to the
    # gradient graphs' feature_keep input), so the mask cannot lean on any one unit of one network.
    feature_dropout: float = field(default=0.0, metadata=_flag(
        "surrogate model augmentation: share of the surrogates' convolution outputs dropped at random in each "
        "gradient step (DFANet; default 0: off)"))
    surrogate_weighting: Literal["equal", "normalised"] = field(default="equal", metadata=_flag(
        "equal: the surrogates' losses averaged (the paper); normalised: each surrogate's gradient scaled "
        "to the same mean magnitude before they are summed"))

    # What people see (``runtime.budget_map``; defaults: the paper's region and a flat budget). The
    # L_inf promise holds in every case: no pixel moves by more than eps.
    support: Literal["box", "face", "head"] = field(default="box", metadata=_flag(
        "where the mask may live: box (the face region's rectangle, faded at its edges), face (a feathered "
        "ellipse from forehead to chin; the background never changes) or head (the face's ellipse, and around "
        "it only pixels with texture: hair, ears, a busy background; a flat background never changes)"))
    perceptual: float = field(default=0.0, metadata=_flag(
        "strength 0..1 of the perceptual budget: less change on flat skin, smooth gradients, near black and "
        "white, the full eps only in texture (default 0: eps everywhere)"))
    chroma: float = field(default=1.0, metadata=_flag(
        "share 0..1 of each step's colour change kept (0: brightness changes only; greyscale photos always "
        "get 0 and stay greyscale; default 1)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.support not in ("box", "face", "head"):
            raise ValueError(f"support must be 'box', 'face' or 'head', got {self.support!r}")
        if not 0 <= self.perceptual <= 1 or not 0 <= self.chroma <= 1:
            raise ValueError("perceptual and chroma must be in [0, 1]")
        if self.ti_sigma < 0 or self.smooth_sigma < 0 or not 0 <= self.smooth_probability <= 1:
            raise ValueError("ti_sigma and smooth_sigma must be >= 0 and smooth_probability in [0, 1]")
        if not 0 <= self.mirror_probability <= 1:
            raise ValueError(f"mirror_probability must be in [0, 1], got {self.mirror_probability}")
        if not 0 <= self.resize_probability <= 1 or not 0.25 <= self.resize_min_scale < 1:
            raise ValueError(f"resize_probability must be in [0, 1] and resize_min_scale in [0.25, 1), got "
                             f"{self.resize_probability} and {self.resize_min_scale}")
        if not 0 <= self.feature_dropout <= 0.5:
            raise ValueError(f"feature_dropout must be in [0, 0.5], got {self.feature_dropout}")
        if self.surrogate_weighting not in ("equal", "normalised"):
            raise ValueError(f"surrogate_weighting must be 'equal' or 'normalised', got {self.surrogate_weighting!r}")
        if self.rescore_every < 1 or (self.settle_after is not None and self.settle_after < 1):
            raise ValueError("rescore_every and settle_after must be >= 1")

    def rescores(self, step: int, winners: list[int]) -> bool:
        """Does step ``step`` (0-based) score all K candidates? ``winners``: the target chosen at each
        earlier re-scoring. The first step always does (there is no target to hold yet).

        Example:
            >>> cfg = TIPIMConfig(rescore_every=4, settle_after=2)
            >>> [cfg.rescores(s, [3]) for s in range(1, 6)]
            [False, False, False, True, False]
            >>> cfg.rescores(8, [3, 3])
            False
        """
        if not winners:
            return True
        if self.settle_after is not None and len(winners) >= self.settle_after \
                and len(set(winners[-self.settle_after:])) == 1:
            return False
        return step % self.rescore_every == 0
