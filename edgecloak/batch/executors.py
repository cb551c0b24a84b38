"""Where batch workers run: this process, N local processes, or Ray (Data ``map_batches`` over an
actor pool). Each executor takes the pending tasks and yields ``(task, record)`` pairs as they
finish; the caller alone writes the manifest (one writer, whatever the executor).

Memory stays bounded on every executor: tasks are paths, photos are read and written by the
workers themselves, and only the small records come back (Ray Data's streaming executor keeps a
bounded number of batches in flight; the process pool hands out one task per idle worker).

Example:
    >>> for task, record in InlineExecutor().run(spec, tasks, root):   # doctest: +SKIP
    ...     print(record["status"])
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from edgecloak.errors import EdgecloakError, UsageError

from .plan import Task
from .worker import PhotoWorker, WorkerSpec


def cores() -> int:
    return len(os.sched_getaffinity(0))


@contextmanager
def ray_session(address: str | None):
    """Ray connected to ``address`` (a running cluster) or a local instance started here (and
    stopped on exit); yields the ``ray`` module. ``UsageError`` when Ray is not installed."""
    try:
        import ray  # optional: the ray extra
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'edgecloak[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


@contextmanager
def _threads_for_children(threads: int):
    """Spawned children inherit the environment: give each its share of the cores."""
    old = os.environ.get("EDGECLOAK_THREADS")
    os.environ["EDGECLOAK_THREADS"] = str(threads)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("EDGECLOAK_THREADS", None)
        else:
            os.environ["EDGECLOAK_THREADS"] = old


def fan_out(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, use_ray: bool = False,
            address: str | None = None) -> Iterator[Any]:
    """``fn(item)`` for every item on ``workers`` spawned local processes or Ray tasks (each with its
    share of the cores, at most ``workers`` in flight), yielding results as they finish.

    For coarse jobs that load their own models (an evaluation method, a calibration point); a
    photo library uses the executors below, which load the models once per worker.

    Example:
        >>> sorted(fan_out(abs, [-1, -2], workers=2))   # doctest: +SKIP
        [1, 2]
    """
    items = list(items)
    share = max(1, cores() // workers)
    if not use_ray:
        pool = None
        try:
            with _threads_for_children(share):  # children are spawned at submit: they read it then
                pool = _process_pool(workers)
                futures = [pool.submit(fn, item) for item in items]
            yield from _as_completed(pool, futures)
        finally:
            if pool is not None:
                _stop(pool)
        return
    with ray_session(address) as ray:
        if address:  # on a cluster a job takes a whole worker's share of one node
            share = 1
        remote = ray.remote(num_cpus=share, runtime_env={"env_vars": {"EDGECLOAK_THREADS": str(share)}})(fn)
        queue, running = list(items), []
        while queue or running:
            while queue and len(running) < workers:  # back-pressure: at most `workers` in flight
                running.append(remote.remote(queue.pop(0)))
            done, running = ray.wait(running, num_returns=1)
            yield ray.get(done[0])


class Executor:
    """Runs ``PhotoWorker``s over tasks. ``workers``: how many; ``description`` names it in summaries."""

    name = "executor"

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise UsageError(f"--workers must be >= 1, got {workers}")
        self.workers = workers
        self.backend = ""

    def run(self, spec: WorkerSpec, tasks: Sequence[Task], root: Path) -> Iterator[tuple[Task, dict[str, Any]]]:
        raise NotImplementedError

    @property
    def description(self) -> str:
        return f"{self.name} x{self.workers}"


class InlineExecutor(Executor):
    """One worker in this process (``--workers 1``)."""

    name = "inline"

    def run(self, spec, tasks, root):
        worker = PhotoWorker(spec)
        self.backend = worker.backend
        try:
            for task in tasks:
                yield task, worker.process(task, root)
        finally:
            worker.close()


# -- local processes --------------------------------------------------------------------------
_WORKER: PhotoWorker | None = None


def _process_pool(workers: int, initializer=None, initargs=()):
    """Spawned processes (no fork of loaded sessions). A pool whose worker dies or fails to start
    is broken, not restarted forever: the run stops with the reason (``_as_completed``)."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=initializer,
                               initargs=initargs)


def _stop(pool) -> None:
    """Shut a pool down when its consumer stops (done, an error, Ctrl-C, the generator closed): the
    queued tasks are cancelled, not run into a job that has stopped; running ones finish (at most one
    per worker), so no output is left half-written."""
    pool.shutdown(wait=True, cancel_futures=True)


def _as_completed(pool, futures):
    try:
        for future in as_completed(futures):
            yield future.result()
    except BrokenProcessPool as exc:
        for future in futures:
            future.cancel()
        raise EdgecloakError(f"a worker process could not start or died ({exc}); "
                             "run with --workers 1 to see the error") from None


def _start_worker(spec: WorkerSpec) -> None:
    global _WORKER
    _WORKER = PhotoWorker(spec)


def _process(item: tuple[Task, Path]) -> tuple[Task, dict[str, Any], str]:
    task, root = item
    assert _WORKER is not None
    return task, _WORKER.process(task, root), _WORKER.backend


class ProcessExecutor(Executor):
    """N local processes (spawned: no fork of loaded sessions), each with its share of the cores."""

    name = "processes"

    def run(self, spec, tasks, root):
        if spec.threads is None:
            spec = replace(spec, threads=max(1, cores() // self.workers))
        pool = _process_pool(self.workers, _start_worker, (spec,))
        try:
            futures = [pool.submit(_process, (t, root)) for t in tasks]  # tasks are paths: cheap to queue
            for task, record, backend in _as_completed(pool, futures):
                self.backend = backend
                yield task, record
        finally:
            _stop(pool)


# -- Ray --------------------------------------------------------------------------------------
class RayPhotoActor:
    """A Ray Data callable class: one ``PhotoWorker`` per actor, loaded once, a batch of tasks per call."""

    def __init__(self, spec: WorkerSpec, root: str):
        self.worker = PhotoWorker(spec)
        self.root = Path(root)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        records = []
        for rel, src, dst, replaces, overwrite in zip(batch["relative"], batch["source"], batch["destination"],
                                                      batch["replaces"], batch["overwrite"]):
            task = Task(str(rel), Path(src), Path(dst), replaces=str(replaces) or None, overwrite=bool(overwrite))
            record = self.worker.process(task, self.root)
            records.append(json.dumps({**record, "_backend": self.worker.backend}))
        return {"relative": list(batch["relative"]), "record": records}


class RayExecutor(Executor):
    """Ray Data ``map_batches`` over a pool of ``workers`` actors on a cluster at ``address`` (or a
    local Ray started here). Outputs are written by the actors: on a multi-node cluster SRC and DST
    must be on a filesystem every node mounts at the same path."""

    name = "ray"

    def __init__(self, workers: int = 1, address: str | None = None):
        super().__init__(workers)
        self.address = address

    def run(self, spec, tasks, root):
        with ray_session(self.address) as ray:
            resources = ray.cluster_resources()
            gpus = float(resources.get("GPU", 0.0))
            cpus = float(resources.get("CPU", 1.0))
            if not self.address and self.workers > cpus:  # actors that can never be placed would wait forever
                raise UsageError(f"--workers {self.workers} is more than the {cpus:g} CPUs of the local Ray instance")
            cpus_per_actor = max(1.0, cpus // self.workers) if not self.address else 1.0
            if spec.threads is None:
                spec = replace(spec, threads=int(cpus_per_actor))
            # plain columns (no nulls): a hash or "" for what the worker may replace at the destination
            items = [{"relative": t.relative, "source": str(t.source), "destination": str(t.destination),
                      "replaces": t.replaces or "", "overwrite": bool(t.overwrite)} for t in tasks]
            ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(tasks), 4 * self.workers)))
            out = ds.map_batches(
                RayPhotoActor, fn_constructor_args=(spec, str(root)), batch_size=1, concurrency=self.workers,
                num_cpus=cpus_per_actor, num_gpus=(gpus / self.workers) if gpus else 0,
            )
            by_rel = {t.relative: t for t in tasks}
            for row in out.iter_rows():
                record = json.loads(row["record"])
                self.backend = record.pop("_backend", self.backend)
                yield by_rel[row["relative"]], record

    @property
    def description(self) -> str:
        return f"ray x{self.workers}" + (f" at {self.address}" if self.address else " (local)")
