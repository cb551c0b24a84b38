"""Named presets: which surrogates, how many targets, which loop settings and how many self-check
retries a photo gets, stored as data with the figures they were chosen by.

``fast`` / ``balanced`` / ``max`` are chosen by measurement (``edgecloak calibrate presets``, see
``budget.py``) and kept in ``presets.json`` next to this module, each with its measured protection,
quality and latency and the machine it was measured on. ``balanced`` is the default.
``edgecloak calibrate presets --install`` writes a machine's own choice to
``$EDGECLOAK_HOME/presets.json``, which then overrides the shipped fast / balanced / max there.
``paper`` (the paper's loop on the two default surrogates) and ``edge`` (the first device preset)
are fixed recipes kept for comparison and reproduction.

Example:
    >>> preset("paper").settings["steps"]
    50
    >>> DEFAULT_PRESET
    'balanced'
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecloak.errors import UsageError

SHIPPED = Path(__file__).with_name("presets.json")
CHOSEN = ("fast", "balanced", "max")  # what calibration decides; the others are fixed recipes
DEFAULT_PRESET = "balanced"


@dataclass(frozen=True)
class Preset:
    """A bundle recipe: surrogates, K, TIPIMConfig fields, self-check retries, and why.

    ``measured``: the figures it was chosen by (``budget.point_figures`` row), or empty.
    """

    name: str
    surrogates: tuple[str, ...]
    num_targets: int
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    retries: int = 1
    measured: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["surrogates"] = list(self.surrogates)
        del d["name"]
        return d

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> "Preset":
        return cls(name, tuple(data["surrogates"]), int(data["num_targets"]), dict(data.get("settings", {})),
                   data.get("note", ""), int(data.get("retries", 1)), dict(data.get("measured", {})))


def installed_path() -> Path:
    """Where ``calibrate presets --install`` puts this machine's own presets."""
    from edgecloak.runtime.paths import edgecloak_home

    return edgecloak_home() / "presets.json"


def read_presets(path: Path) -> dict[str, Preset]:
    """The presets in a presets.json (``UsageError`` naming the file when it is unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
        return {name: Preset.from_dict(name, p) for name, p in data["presets"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a presets file ({exc})") from None


def load_presets() -> dict[str, Preset]:
    """The shipped presets, with fast / balanced / max replaced by this machine's installed ones."""
    presets = read_presets(SHIPPED)
    local = installed_path()
    if local.exists():
        try:
            presets.update({k: v for k, v in read_presets(local).items() if k in CHOSEN})
        except UsageError as exc:  # never let a damaged local file break every command (or its fix)
            import warnings

            warnings.warn(f"ignoring this machine's presets: {exc}; using the shipped ones "
                          "(`edgecloak calibrate presets --install` rewrites it)", stacklevel=2)
    return presets


PRESETS: dict[str, Preset] = load_presets()


def preset(name: str) -> Preset:
    """The preset called ``name`` (``UsageError`` listing the known ones otherwise)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
