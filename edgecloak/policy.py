"""The self-check policy: when a face counts as protected, and what happens when one is not.

Example:
    >>> SafetyPolicy(on_fail="blur-face").on_fail
    'blur-face'
    >>> SafetyPolicy().retries == DEFAULT_RETRIES
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgecloak.errors import UsageError

ON_FAIL_POLICIES = ("drop", "blur-face", "keep")
# Re-runs of a failing face when neither the preset nor the bundle nor the user says otherwise.
DEFAULT_RETRIES = 1


@dataclass(frozen=True)
class SafetyPolicy:
    """When a face counts as protected, and what happens to a photo when one is not (fails closed).

    The self-check re-detects every face in the protected photo and embeds it with the surrogates.
    A face passes when its ``margin``, the surrogate mean of ``cos(protected, target) -
    cos(protected, original)``, exceeds ``min_margin``: a recognizer shown the user's clean photo
    and the target would pick the target. The protected face is found again by the detector, as a
    recognizer downstream would (a mask that shifts the detector's landmarks counts against it). A
    failing face is run again ``retries`` times, each time with twice the previous steps (at least
    the configured steps), starting from where it stands (the eps budget is never
    raised: it is the user's visual promise). Faces whose shorter side is under ``min_face`` px are
    not cloaked (too few pixels to carry a mask) and count as failed.

    ``on_fail``: ``drop`` (default) raises ``ProtectionFailedError`` and nothing is emitted;
    ``blur-face`` hides each failing face under a coarse mosaic and blur; ``keep`` emits the photo
    with the face reported as unprotected. The check uses the surrogates, so it is white-box:
    unseen recognizers are fooled less often (see README, measured protection).
    """

    min_margin: float = 0.0
    retries: int = DEFAULT_RETRIES
    min_face: int = 32
    on_fail: str = "drop"

    def __post_init__(self) -> None:
        if self.on_fail not in ON_FAIL_POLICIES:
            raise UsageError(f"unknown --on-fail {self.on_fail!r}; choose one of {', '.join(ON_FAIL_POLICIES)}")
        if self.retries < 0 or self.min_face < 0:
            raise UsageError("retries and min_face must be >= 0")
        if not math.isfinite(self.min_margin):  # nan would fail every face without saying why
            raise UsageError(f"--min-margin must be a finite number, got {self.min_margin}")
