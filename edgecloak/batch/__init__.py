"""``edgecloak batch``: cloak a whole photo library, on one machine or on a Ray cluster.

The library is walked once into tasks (``plan.py``); what an earlier run finished is skipped from
the manifest (``manifest.py``, JSONL, one line per photo, appended as results arrive); the rest is
cloaked by ``PhotoWorker``s (``worker.py``: one Cloaker each, loaded once) run by an executor
(``executors.py``: in this process, a pool of local processes, or Ray Data over an actor pool).
Every executor yields the same records, so the manifest, resume rules and summary are one code
path (``job.py``).

Example:
    >>> summary = run_batch(BatchSettings(Path("photos"), Path("cloaked"), workers=2))  # doctest: +SKIP
    >>> summary["done"], summary["photos_per_second"]                                     # doctest: +SKIP
    (120, 0.9)
"""

from .job import BatchSettings, run_batch

__all__ = ["BatchSettings", "run_batch"]
