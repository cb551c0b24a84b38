"""The batch job: plan, skip what is finished, run the rest on an executor, keep the manifest and
write the summary. One code path for every executor.

Example:
    >>> summary = run_batch(BatchSettings(Path("photos"), Path("cloaked"), workers=2))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

from tqdm import tqdm

from edgecloak.errors import OutputError, UsageError
from edgecloak.runtime.atomic import write_json_atomic
from edgecloak.runtime.image_io import OutputFormat

from .executors import Executor, InlineExecutor, ProcessExecutor, RayExecutor
from .manifest import FINISHED, Manifest
from .plan import Task, plan_tasks
from .worker import JOURNAL, WorkerSpec, resolved, spec_dict, spec_key

MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"


@dataclass
class BatchSettings:
    """What ``edgecloak batch`` was asked to do. The output format is ``spec.output`` (built, and its
    JPEG quality checked, before anything runs).

    Example:
        >>> BatchSettings(Path("photos"), Path("cloaked"), WorkerSpec(output=OutputFormat.named("jpg", 90))).suffix
        '.jpg'
    """

    source: Path
    destination: Path
    spec: WorkerSpec = field(default_factory=WorkerSpec)
    workers: int = 1
    ray: bool = False
    ray_address: str | None = None
    overwrite: bool = False  # replace or remove files in DST that batch did not write; replace summary_copy
    summary_copy: Path | None = None  # --json: the summary written here too (checked before any work)

    @property
    def suffix(self) -> str:
        """The outputs' extension (``.png`` or ``.jpg``)."""
        return self.spec.output.suffix

    def executor(self) -> Executor:
        if self.ray:
            return RayExecutor(self.workers, self.ray_address)
        return InlineExecutor(1) if self.workers == 1 else ProcessExecutor(self.workers)


def run_batch(settings: BatchSettings, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Cloak every photo under SRC into DST (resumable); return and write the summary.

    Per-photo failures are recorded in the manifest and do not stop the run. What stops it is one
    typed error: bad settings (``UsageError``, before any worker starts) or a manifest or summary
    that cannot be written (``OutputError``, e.g. a full disk: the workers are stopped, finished
    lines stay, and a re-run resumes).

    A file already standing where an output goes is replaced (or, for a photo that did not finish,
    removed) only when it is this tool's own output (its sha256 is the ``output_sha256`` of the
    source's latest manifest line, or, for an output whose line a kill lost, of a worker's journal
    entry for it) or ``settings.overwrite`` is set; anything else is left alone and the photo is
    recorded as an ``error`` saying so. ``summary_copy`` (``--json``) is checked before
    any work and never replaces a file without ``overwrite``. The summary counts the finished photos
    written with a face left unprotected (``unprotected``; ``--on-fail keep``) apart.

    Example:
        >>> run_batch(BatchSettings(Path("photos"), Path("cloaked")), progress=False)["statuses"]  # doctest: +SKIP
        {'done': 12, 'no-face': 1}
    """
    src, dst = Path(settings.source), Path(settings.destination)
    spec = resolved(settings.spec)  # a bad preset or setting fails here, once, not in every worker
    if not isinstance(spec.output, OutputFormat):
        raise UsageError(f"the output format must be an OutputFormat, got {spec.output!r}")
    key = spec_key(spec)
    tasks = plan_tasks(src, dst, settings.suffix.lstrip("."))
    copy = _check_summary_copy(Path(settings.summary_copy), tasks, src, dst, settings.overwrite) \
        if settings.summary_copy is not None else None
    try:
        dst.mkdir(parents=True, exist_ok=True)
        # a killed run's half-written files (never renamed into place): only the atomic writer's own
        # temporaries next to a planned output, never any other ".*.tmp" a user keeps in DST
        _remove_temporaries([t.destination for t in tasks] + [dst.resolve() / SUMMARY])
    except OSError as exc:
        raise OutputError(f"{dst}: cannot prepare the output folder ({exc.strerror or exc})") from exc
    manifest = Manifest(dst / MANIFEST)
    pending = [replace(t, replaces=_own_output(manifest, t, dst.resolve()), overwrite=settings.overwrite)
               for t in tasks if not manifest.finished(t, key)]
    skipped = len(tasks) - len(pending)
    executor = settings.executor()
    log(f"{len(tasks)} photo(s) under {src}: {skipped} already done, {len(pending)} to cloak on {executor.description}")
    statuses: Counter[str] = Counter()
    unprotected = 0
    started = time.perf_counter()
    first_done = None
    results = executor.run(spec, pending, dst.resolve()) if pending else _no_results()  # no workers for nothing
    try:
        with tqdm(total=len(pending), unit="photo", desc="cloak", disable=not progress or not pending) as bar:
            for task, record in results:
                record["spec_key"] = key
                manifest.append(record)
                statuses[record["status"]] += 1
                if first_done is None:
                    first_done = time.perf_counter()
                if record["status"] not in FINISHED:
                    bar.write(f"{task.relative}: {record['status']}: {record['error']}")
                elif _unprotected(record):
                    unprotected += 1
                    bar.write(f"{task.relative}: written with an unprotected face (--on-fail keep): "
                              f"{_unprotected(record)}")
                bar.update()
    except BaseException:
        # Stop the workers now (no more photos cloaked into a run that cannot record them), and
        # report the first error: a second one from closing must not hide it.
        _close_quietly(results, manifest)
        raise
    results.close()
    manifest.close()
    seconds = time.perf_counter() - started
    latest = [manifest.latest.get(t.relative, {}) for t in tasks]
    finished = sum(1 for r in latest if r.get("status") in FINISHED)
    processed = sum(statuses.values())
    summary = {
        "source": str(src), "destination": str(dst), "executor": executor.description, "workers": settings.workers,
        "backend": executor.backend, "photos": len(tasks), "skipped_already_done": skipped, "processed": processed,
        "statuses": dict(statuses), "finished_in_library": finished,
        # written with a face left as it was (--on-fail keep): finished, but not protected
        "unprotected": unprotected,
        "unprotected_in_library": sum(1 for r in latest if r.get("status") in FINISHED and _unprotected(r)),
        "seconds": round(seconds, 3),
        "photos_per_second": round(processed / seconds, 4) if processed and seconds > 0 else None,
        # throughput once the workers are up (model loading excluded): what a long run sustains
        "photos_per_second_after_first": round((processed - 1) / (time.perf_counter() - first_done), 4)
        if first_done and processed > 1 else None,
        "output_format": spec.output.describe(), "spec": spec_dict(spec), "spec_key": key,
    }
    write_json_atomic(dst / SUMMARY, summary)
    if copy is not None:
        write_json_atomic(copy, summary, overwrite=settings.overwrite)  # refuses a file that appeared meanwhile
    _remove_journals(dst.resolve() / JOURNAL)  # every output is in the manifest now
    return summary


def _remove_journals(folder: Path) -> None:
    """Remove the workers' journals (``worker.PhotoWorker._record_intent``) once a run has recorded
    everything; best effort (a journal left behind only vouches for bytes batch wrote)."""
    try:
        for journal in folder.glob("*.jsonl"):
            if journal.is_file() and not journal.is_symlink():
                journal.unlink()
        folder.rmdir()
    except OSError:
        pass


def _unprotected(record: dict[str, Any]) -> str | None:
    """Why a finished photo carries a face that is neither cloaked nor obscured (None: it does not)."""
    faces = record.get("faces")
    for face in faces if isinstance(faces, list) else []:
        if isinstance(face, dict) and face.get("action") not in ("cloaked", "obscured"):
            return str(face.get("reason") or f"face {face.get('action')}")
    return None


def _own_output(manifest: Manifest, task: Task, root: Path) -> str | None:
    """The sha256 of the output this tool wrote at ``task.destination``, by the source's latest manifest
    line (None: the manifest shows none there). The worker compares it with the file before it
    replaces or removes anything: a user's file, or an output edited since, is never touched."""
    record = manifest.latest.get(task.relative) or {}
    digest, output = record.get("output_sha256"), record.get("output")
    try:
        here = task.destination.relative_to(root).as_posix()
    except ValueError:
        return None
    return digest if isinstance(digest, str) and digest and output == here else None


def _remove_temporaries(planned: list[Path]) -> None:
    """Remove the atomic writer's temporaries (``.{name}.XXXXXXXX.tmp``, regular files) left next to
    the ``planned`` files by a killed run. One listing per folder; a missing folder has none."""
    names: defaultdict[Path, set[str]] = defaultdict(set)
    for path in planned:
        names[path.parent].add(path.name)
    for folder, planned_names in names.items():
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            name = entry.name
            if (name.startswith(".") and name.endswith(".tmp") and name[1:-4].rpartition(".")[0] in planned_names
                    and entry.is_file(follow_symlinks=False)):
                os.unlink(entry.path)


def _check_summary_copy(path: Path, tasks: list[Task], src: Path, dst: Path, overwrite: bool) -> Path:
    """``--json PATH``, checked before any work: its folder exists, it is not inside SRC (an original),
    not a file batch writes itself, and (without ``--overwrite``) nothing is there yet. ``UsageError``."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"--json {path}: the folder {parent} does not exist")
    real, src, dst = path.resolve(), src.resolve(), dst.resolve()
    inside_dst = real == dst or dst in real.parents
    if (real == src or src in real.parents) and not inside_dst:
        raise UsageError(f"--json {path}: inside the source folder {src}; originals are never modified, "
                         "choose another path")
    if real in {dst / MANIFEST, dst / SUMMARY} | {t.destination.resolve() for t in tasks}:
        raise UsageError(f"--json {path}: batch writes that file itself ({real}); choose another path")
    if path.is_dir():
        raise UsageError(f"--json {path}: is a folder; give a file path")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UsageError(f"--json {path}: already exists; pass --overwrite to replace it or choose another path")
    return path


def _no_results() -> Iterator[tuple[Task, dict[str, Any]]]:
    yield from ()


def _close_quietly(results: Generator[Any, None, None], manifest: Manifest) -> None:
    """Close the executor's generator (its workers stop) and the manifest, swallowing their errors."""
    for close in (results.close, manifest.close):
        try:
            close()
        except Exception:  # noqa: BLE001 -- the error already in flight is the one to report
            pass
