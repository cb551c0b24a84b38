"""Row-parallel numpy on the device's CPUs: most ufuncs and ``np.take`` release the GIL.

The TIP-IM loop alternates engine calls with numpy work over K candidate images; splitting that
work by rows (candidates, or image planes) over a small thread pool uses every core for it.

Example:
    >>> out = np.zeros(10)
    >>> def fill(lo, hi, tag): out[lo:hi] = np.arange(lo, hi)
    >>> for_row_chunks(10, fill); float(out[-1])
    9.0
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np



def cpu_threads() -> int:
    """CPU threads one protector may use: ``$EDGECLOAK_THREADS`` (set by multi-worker runs, so N
    workers on N cores do not each start N threads), else every core this process may run on.

    Example:
        >>> os.environ["EDGECLOAK_THREADS"] = "1"; cpu_threads()
        1
        >>> del os.environ["EDGECLOAK_THREADS"]
    """
    env = os.environ.get("EDGECLOAK_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    return len(os.sched_getaffinity(0))


def row_threads() -> int:
    """Threads for the row-parallel numpy (read when first needed, so a worker's share applies)."""
    return min(4, cpu_threads())
_EXECUTOR: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(row_threads(), thread_name_prefix="edgecloak-rows")
    return _EXECUTOR


def for_row_chunks(n: int, work: Callable[[int, int, str], None], min_rows_per_thread: int = 2) -> None:
    """Call ``work(lo, hi, tag)`` on contiguous chunks covering rows 0..n, in parallel when worth it.

    ``tag`` is distinct per chunk (for per-chunk scratch buffers). Exceptions propagate.
    """
    threads = min(row_threads(), n // max(min_rows_per_thread, 1))
    if threads <= 1:
        work(0, n, "")
        return
    bounds = np.linspace(0, n, threads + 1).astype(int)
    futures = [_executor().submit(work, int(bounds[t]), int(bounds[t + 1]), f"-{t}") for t in range(threads)]
    for f in futures:
        f.result()
