"""Named presets: product data, read when first asked for (never at import time).

A preset names the surrogates, K, the ``TIPIMConfig`` fields it changes and the self-check retries
a photo gets, with the figures it was chosen by. ``fast`` / ``balanced`` / ``max`` are decided by
measurement (``edgecloak calibrate presets``) and shipped in ``calibration/presets.json`` with the
machine they were measured on; ``edgecloak calibrate presets --install`` writes a machine's own
choice to ``$EDGECLOAK_HOME/presets.json``, which then overrides the shipped three there.
``paper`` (the paper's loop on the two default surrogates) and ``edge`` (the first device preset)
are fixed recipes kept for comparison and reproduction. ``balanced`` is the default.

Nothing is read from disk until a preset is asked for, so importing the SDK or starting the CLI
neither reads the files nor warns about a damaged local one. ``edgecloak.recipe.resolve`` turns a
preset into the settings a run uses; this module only reads the data.

Example:
    >>> preset("paper").settings["steps"]
    50
    >>> DEFAULT_PRESET, preset("fast").surrogates
    ('balanced', ('mobileface',))
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecloak.errors import UsageError
from edgecloak.policy import DEFAULT_RETRIES
from edgecloak.runtime.paths import edgecloak_home

# The shipped presets are calibration's output: they live beside the code that decides them (as
# package data, so an installed wheel finds them as well as a source checkout does).
SHIPPED = Path(str(importlib.resources.files("edgecloak.calibration") / "presets.json"))
CHOSEN = ("fast", "balanced", "max")  # what calibration decides; the others are fixed recipes
DEFAULT_PRESET = "balanced"


@dataclass(frozen=True)
class Preset:
    """A recipe as stored: surrogates, K, ``TIPIMConfig`` fields, self-check retries, and why.

    ``settings`` holds only the fields the preset changes (the rest are ``TIPIMConfig``'s
    defaults); ``measured`` the figures it was chosen by (``calibration.budget`` row), or empty.
    """

    name: str
    surrogates: tuple[str, ...]
    num_targets: int
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    retries: int = DEFAULT_RETRIES
    measured: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["surrogates"] = list(self.surrogates)
        del d["name"]
        return d

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> "Preset":
        return cls(name, tuple(data["surrogates"]), int(data["num_targets"]), dict(data.get("settings", {})),
                   data.get("note", ""), int(data.get("retries", DEFAULT_RETRIES)), dict(data.get("measured", {})))


def installed_path() -> Path:
    """Where ``calibrate presets --install`` puts this machine's own presets."""
    return edgecloak_home() / "presets.json"


def read_presets(path: Path) -> dict[str, Preset]:
    """The presets in a presets.json (``UsageError`` naming the file when it is unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
        return {name: Preset.from_dict(name, p) for name, p in data["presets"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path}: not a presets file ({exc})") from None


@functools.cache
def _presets_from(local: Path) -> dict[str, Preset]:
    presets = read_presets(SHIPPED)
    if local.exists():
        try:
            presets.update({k: v for k, v in read_presets(local).items() if k in CHOSEN})
        except UsageError as exc:  # never let a damaged local file break every command (or its fix)
            warnings.warn(f"ignoring this machine's presets: {exc}; using the shipped ones "
                          "(`edgecloak calibrate presets --install` rewrites it)", stacklevel=3)
    return presets


def load_presets() -> dict[str, Preset]:
    """The shipped presets, with fast / balanced / max replaced by this machine's installed ones.

    Read once per ``$EDGECLOAK_HOME`` and process; ``forget_presets`` reads them again.
    """
    return dict(_presets_from(installed_path()))


def forget_presets() -> None:
    """Drop what was read, so the next lookup reads the files again (after ``--install``, in tests)."""
    _presets_from.cache_clear()


def preset_names() -> tuple[str, ...]:
    """The names a ``--preset`` may take."""
    return tuple(load_presets())


def preset(name: str) -> Preset:
    """The preset called ``name`` (``UsageError`` listing the known ones otherwise)."""
    presets = load_presets()
    try:
        return presets[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(presets)}") from None
