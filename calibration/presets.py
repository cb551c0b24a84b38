"""Named presets: which surrogates, how many targets and which loop settings a bundle is made for.

Stored as data with the figures they were chosen by (measured on the 2-core CPU of the CI machine,
see README "Speed"); the calibration issue will regenerate them by measurement, protection
included. ``edge`` is the default of ``edgecloak export`` (bundles are for devices): one face in
under 1.5 s on that CPU with the ONNX Runtime runtime. ``paper`` is the default of ``protect``.

Example:
    >>> preset("paper").settings["steps"]
    50
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgecloak.errors import UsageError


@dataclass(frozen=True)
class Preset:
    """A bundle recipe: surrogates, K, TIPIMConfig fields, and why."""

    name: str
    surrogates: tuple[str, ...]
    num_targets: int
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        "paper", ("mobileface", "faceres"), 10, {"steps": 50},
        "the paper's defaults (eps 12, N 50, alpha 1.5, mu 1, K 10) on the two default surrogates",
    ),
    "edge": Preset(
        "edge", ("mobileface",), 10, {"steps": 16, "alpha": 2.0},
        "one fast surrogate, K 10, 16 steps of 2.0: 0.9-1.0 s per face, detection included, on the "
        "2-core CPU (ONNX Runtime runtime, the sample photo's 315 px face region). On 10 probes "
        "(gallery: the other 117 photos) white-box mobileface no longer ranks the true identity "
        "first for 8/10 (N 12: 5/10, N 50 at alpha 1.5: 7/10); black-box faceres-deep for 1/10",
    ),
}
DEFAULT_PRESET = "edge"


def preset(name: str) -> Preset:
    """The preset called ``name`` (``UsageError`` listing the known ones otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
