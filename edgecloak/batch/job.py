"""The batch job: plan, skip what is finished, run the rest on an executor, keep the manifest and
write the summary. One code path for every executor.

Example:
    >>> summary = run_batch(BatchSettings(Path("photos"), Path("cloaked"), workers=2))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

from edgecloak.errors import OutputError, UsageError
from edgecloak.runtime.atomic import write_json_atomic
from edgecloak.runtime.image_io import OutputFormat

from .executors import Executor, InlineExecutor, ProcessExecutor, RayExecutor
from .manifest import Manifest
from .plan import Task, plan_tasks
from .worker import WorkerSpec, resolved, spec_dict, spec_key

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

    Example:
        >>> run_batch(BatchSettings(Path("photos"), Path("cloaked")), progress=False)["statuses"]  # doctest: +SKIP
        {'done': 12, 'no-face': 1}
    """
    from tqdm import tqdm

    from edgecloak.runtime.config import TIPIMConfig

    src, dst = Path(settings.source), Path(settings.destination)
    spec = resolved(settings.spec)
    if not isinstance(spec.output, OutputFormat):
        raise UsageError(f"the output format must be an OutputFormat, got {spec.output!r}")
    try:  # bad settings fail here, once, not in every worker
        TIPIMConfig(**spec.settings)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    key = spec_key(spec)
    tasks = plan_tasks(src, dst, settings.suffix.lstrip("."))
    try:
        dst.mkdir(parents=True, exist_ok=True)
        for stale in dst.rglob(".*.tmp"):  # a killed run's half-written outputs (never renamed into place)
            stale.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"{dst}: cannot prepare the output folder ({exc.strerror or exc})") from exc
    manifest = Manifest(dst / MANIFEST)
    pending = [t for t in tasks if not manifest.finished(t, key)]
    skipped = len(tasks) - len(pending)
    executor = settings.executor()
    log(f"{len(tasks)} photo(s) under {src}: {skipped} already done, {len(pending)} to cloak on {executor.description}")
    statuses: Counter[str] = Counter()
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
                if record["status"] not in ("done", "no-face-copied"):
                    bar.write(f"{task.relative}: {record['status']}: {record['error']}")
                bar.update()
    except BaseException:
        # Stop the workers now (no more photos cloaked into a run that cannot record them), and
        # report the first error: a second one from closing must not hide it.
        _close_quietly(results, manifest)
        raise
    results.close()
    manifest.close()
    seconds = time.perf_counter() - started
    finished = sum(1 for t in tasks if manifest.latest.get(t.relative, {}).get("status") in ("done", "no-face-copied"))
    processed = sum(statuses.values())
    summary = {
        "source": str(src), "destination": str(dst), "executor": executor.description, "workers": settings.workers,
        "backend": executor.backend, "photos": len(tasks), "skipped_already_done": skipped, "processed": processed,
        "statuses": dict(statuses), "finished_in_library": finished, "seconds": round(seconds, 3),
        "photos_per_second": round(processed / seconds, 4) if processed and seconds > 0 else None,
        # throughput once the workers are up (model loading excluded): what a long run sustains
        "photos_per_second_after_first": round((processed - 1) / (time.perf_counter() - first_done), 4)
        if first_done and processed > 1 else None,
        "output_format": spec.output.describe(), "spec": spec_dict(spec), "spec_key": key,
    }
    write_json_atomic(dst / SUMMARY, summary)
    return summary


def _no_results() -> Iterator[tuple[Task, dict[str, Any]]]:
    yield from ()


def _close_quietly(results: Generator[Any, None, None], manifest: Manifest) -> None:
    """Close the executor's generator (its workers stop) and the manifest, swallowing their errors."""
    for close in (results.close, manifest.close):
        try:
            close()
        except Exception:  # noqa: BLE001 -- the error already in flight is the one to report
            pass
