"""The library as tasks: every photo under SRC, and where its cloaked copy goes under DST.

The tree is mirrored; the output keeps the file's stem and gets the output format's extension
(``a/b/IMG_1.jpg`` -> ``a/b/IMG_1.png``). Two sources that would meet at one output (``x.jpg`` and
``x.png``) keep their whole name (``x.jpg.png``). DST inside SRC is never walked.

Example:
    >>> [t.relative for t in plan_tasks(Path("photos"), Path("cloaked"))]   # doctest: +SKIP
    ['2024/beach.jpg', 'family.png']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecloak.errors import UsageError
from edgecloak.runtime.bundle import sha256_file

__all__ = ["PHOTO_SUFFIXES", "Task", "plan_tasks", "sha256_file"]

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Task:
    """One photo: its path relative to SRC (the manifest's key) and both absolute paths."""

    relative: str
    source: Path
    destination: Path


def plan_tasks(src: Path, dst: Path, fmt: str = "png") -> list[Task]:
    """Every photo under ``src`` (recursively, sorted, symlinks to files followed, hidden files
    skipped) with its output under ``dst``. ``UsageError`` for a missing SRC or DST == SRC."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_dir():
        raise UsageError(f"{src}: not a folder")
    if dst == src or dst in src.parents:
        raise UsageError("the output folder must not be the source folder or contain it (originals are never modified)")
    files = sorted(p for p in src.rglob("*")
                   if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES and dst not in p.parents
                   and not any(part.startswith(".") for part in p.relative_to(src).parts))
    stems: dict[str, int] = {}
    for p in files:  # case-folded: on a case-insensitive disk Photo.jpg and photo.png meet too
        key = p.relative_to(src).with_suffix("").as_posix().casefold()
        stems[key] = stems.get(key, 0) + 1
    tasks, taken = [], {}
    for p in files:
        rel = p.relative_to(src)
        unique = stems[rel.with_suffix("").as_posix().casefold()] == 1
        out = rel.with_suffix(f".{fmt}") if unique else rel.with_name(f"{rel.name}.{fmt}")
        key = out.as_posix().casefold()
        if key in taken:  # e.g. x.jpg + x.png + x.jpg.png: refuse rather than let one overwrite another
            raise UsageError(f"{rel} and {taken[key]} would both be written to {out}; rename one of them")
        taken[key] = rel
        tasks.append(Task(rel.as_posix(), p, dst / out))
    return tasks
