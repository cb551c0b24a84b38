"""Where each protected photo of one ``protect`` run goes: distinct names, never an original.

``OUTDIR/STEM.EXT`` is the name a photo gets (EXT from the output format). Names are compared
case-folded, as a case-insensitive disk (macOS, Windows, most SD cards) would. Three things change
a name, and each is said in the planned output's ``note``:

- the name is one of the input photos themselves (``-o`` pointing at the photos' own folder with
  the same format): ``STEM.cloaked.EXT``, so an original is never replaced;
- an earlier photo of the same run already takes the name (``a/IMG.jpg`` and ``b/IMG.jpg``, or
  ``photo.jpg`` and ``photo.png``): ``STEM-2.EXT``, ``STEM-3.EXT``, ...;
- the same file given twice is protected once.

Files that already exist on disk are not renamed around: the caller refuses to replace them
unless asked (``--overwrite``), so a re-run never silently writes beside or over old results.

Example:
    >>> [(o.destination.name, o.note is not None) for o in plan_outputs(
    ...     [Path("a/IMG.jpg"), Path("b/IMG.jpg")], Path("out"), ".png")]
    [('IMG.png', False), ('IMG-2.png', True)]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class PlannedOutput:
    """One input photo and the file its protected copy is written to (``note``: why it was renamed)."""

    source: Path
    destination: Path
    note: str | None = None


def plan_outputs(photos: Sequence[Path], outdir: Path, suffix: str) -> list[PlannedOutput]:
    """Distinct output paths under ``outdir`` for ``photos`` (see the module docstring for the rules)."""
    inputs = {_identity(p).casefold() for p in photos}  # case-folded: never even beside an original's name
    seen_sources: set[str] = set()
    taken: dict[str, Path] = {}  # case-folded output name -> the photo that took it
    planned = []
    for photo in photos:
        ident = _identity(photo)
        if ident in seen_sources:
            continue  # the same file twice: once is enough (reported by the caller as a skipped duplicate)
        seen_sources.add(ident)
        dest, note = outdir / f"{photo.stem}{suffix}", None
        if _identity(dest).casefold() in inputs:
            dest, note = outdir / f"{photo.stem}.cloaked{suffix}", f"{photo.stem}{suffix} is an input photo"
        n = 2
        first = dest
        while dest.name.casefold() in taken or _identity(dest).casefold() in inputs:
            dest = outdir / f"{first.stem}-{n}{suffix}"
            n += 1
        if dest != first:
            owner = taken.get(first.name.casefold())
            note = f"{first.name} is taken by {owner}" if owner is not None else f"{first.name} is an input photo"
        taken[dest.name.casefold()] = photo
        planned.append(PlannedOutput(photo, dest, note))
    return planned


def duplicates(photos: Sequence[Path]) -> list[Path]:
    """The photos given more than once (after the first time), in order."""
    seen: set[str] = set()
    out = []
    for photo in photos:
        ident = _identity(photo)
        if ident in seen:
            out.append(photo)
        seen.add(ident)
    return out


def _identity(path: Path) -> str:
    """The absolute path with symlinks resolved: one key per file (``os.path.normcase`` for Windows)."""
    return os.path.normcase(str(Path(path).resolve()))
