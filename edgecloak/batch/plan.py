"""The library as tasks: every photo under SRC, and where its cloaked copy goes under DST.

The tree is mirrored; the output keeps the file's stem and gets the output format's extension
(``a/b/IMG_1.jpg`` -> ``a/b/IMG_1.png``). Two sources that would meet at one output (``x.jpg`` and
``x.png``) keep their whole name (``x.jpg.png``). DST inside SRC is never walked.

Originals are never written through a link: every source and every destination is resolved, and the
plan is refused (``UsageError``, before any work) when a source resolves inside DST (``src/a.png ->
dst/a.png``), a destination resolves inside SRC outside DST (a folder of DST that is a link into
SRC), or a destination already is one of the sources (a link or a hard link).

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
    """One photo: its path relative to SRC (the manifest's key) and both absolute paths.

    What may happen to a file already standing at ``destination`` (set by the job from the manifest
    and ``--overwrite``): it is replaced or removed only when ``overwrite`` is set, or when it is this
    tool's own output, i.e. its sha256 is still ``replaces`` (the ``output_sha256`` of the source's
    latest manifest line; for an output whose line a kill lost, a worker's journal vouches for it:
    ``worker.may_replace``). Anything else there is left alone and the photo recorded as an error.
    """

    relative: str
    source: Path
    destination: Path
    replaces: str | None = None
    overwrite: bool = False


def plan_tasks(src: Path, dst: Path, fmt: str = "png") -> list[Task]:
    """Every photo under ``src`` (recursively, sorted, symlinks to files followed, hidden files
    skipped) with its output under ``dst``. ``UsageError`` for a missing SRC, DST == SRC, SRC inside
    DST, or a link that would let an output land on an original (see the module)."""
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
    _refuse_links_onto_originals(src, dst, tasks)
    return tasks


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise UsageError(f"{path}: cannot resolve the path ({exc})") from None


def _refuse_links_onto_originals(src: Path, dst: Path, tasks: list[Task]) -> None:
    """``UsageError`` when a link would make an output replace (or the worker remove) an original.

    ``src`` and ``dst`` are resolved. Sources are checked as the files they resolve to (a link into
    DST would be cloaked onto itself), destinations as where a write would land (a folder of DST
    that links into SRC), and by identity (a hard link of a source standing in DST)."""
    originals: dict[tuple[int, int], str] = {}
    for task in tasks:
        real = _resolve(task.source)
        if _inside(real, dst):
            raise UsageError(f"{task.source} links to {real}, inside the output folder {dst}; originals are never "
                             "modified: remove the link or choose another output folder")
        try:
            st = real.stat()
        except OSError:  # unreadable now: the worker records why
            continue
        originals[(st.st_dev, st.st_ino)] = task.relative
    for task in tasks:
        real = _resolve(task.destination)
        if _inside(real, src) and not _inside(real, dst):
            raise UsageError(f"{task.destination} resolves to {real}, inside the source folder {src} (a link in the "
                             "output folder); originals are never modified: remove the link or choose another output "
                             "folder")
        try:
            st = real.stat()
        except OSError:  # nothing there yet
            continue
        if (st.st_dev, st.st_ino) in originals:
            raise UsageError(f"{task.destination} is the same file as the source {originals[(st.st_dev, st.st_ino)]} "
                             "(a link); originals are never modified: remove it or choose another output folder")
