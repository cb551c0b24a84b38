"""Background uploads: the user's command runs on each finished frame, off the capture thread.

The queue is bounded: when it is full a frame is not waited for, it stays pending in the outbox
and the worker picks it up again once the queue has drained (so a slow upload never blocks
capture, and nothing is lost). A failed upload is marked and retried by the next run, not in a
loop. ``close`` drains for up to ``drain_timeout`` seconds, then stops the command in flight; what
is left stays pending for the next run (``edgecloak run --upload-pending``).

The command is split like a shell line (no shell is started); ``{}`` is replaced by the frame's
path, otherwise the path is appended: ``rclone copy {} remote:photos``, ``scp {} host:inbox/``.

Example:
    >>> up = Uploader("cp {} /mnt/share/", outbox)    # doctest: +SKIP
    >>> up.resume(); up.submit(path); up.close(10.0)  # doctest: +SKIP
"""

from __future__ import annotations

import queue
import shlex
import subprocess
import threading
import time
from pathlib import Path

from edgecloak.errors import UsageError

from .outbox import Outbox


class Uploader:
    """One worker thread running ``command`` per frame, fed by a bounded queue."""

    def __init__(self, command: str, outbox: Outbox, max_queue: int = 8, timeout: float = 600.0):
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"--upload-cmd: {exc}") from None
        if not self.argv:
            raise UsageError("--upload-cmd is empty")
        if max_queue < 1:
            raise UsageError("--queue-size must be >= 1")
        self.outbox, self.timeout = outbox, timeout
        self.queue: queue.Queue[Path] = queue.Queue(maxsize=max_queue)
        self.stats = {"uploaded": 0, "failed": 0, "deferred": 0}
        self._known: set[Path] = set()  # queued or uploading
        self._failed: set[Path] = set()  # not retried in this run
        self._backlog = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._work, name="edgecloak-upload", daemon=True)
        self._thread.start()

    def submit(self, path: Path) -> None:
        """Queue a finished frame, or leave it pending when the queue is full (never blocks)."""
        with self._lock:
            if path in self._known or path in self._failed:
                return
            try:
                self.queue.put_nowait(path)
                self._known.add(path)
            except queue.Full:
                self.stats["deferred"] += 1
                self._backlog.set()

    def resume(self) -> int:
        """Queue what earlier runs left pending; returns how many frames are pending."""
        pending = self.outbox.pending()
        for path in pending:
            self.submit(path)
        return len(pending)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                path = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self._backlog.is_set():  # the queue drained: take back what did not fit
                    self._backlog.clear()
                    self.resume()
                continue
            try:
                self._upload(path)
            finally:
                with self._lock:
                    self._known.discard(path)
                self.queue.task_done()

    def _upload(self, path: Path) -> None:
        argv = [a.replace("{}", str(path)) for a in self.argv]
        if not any("{}" in a for a in self.argv):
            argv.append(str(path))
        started = time.perf_counter()
        try:
            self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            _, err = self._process.communicate(timeout=self.timeout)
            rc = self._process.returncode
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            rc, err = None, f"timed out after {self.timeout:g} s"
        except OSError as exc:
            rc, err = None, f"cannot run {argv[0]}: {exc.strerror or exc}"
        finally:
            self._process = None
        if self._stop.is_set() and rc != 0:
            return  # stopped by close(): the frame stays pending, not failed
        info = {"command": argv, "returncode": rc, "seconds": round(time.perf_counter() - started, 3)}
        if rc == 0:
            self.outbox.mark(path, True, info)
            self.stats["uploaded"] += 1
        else:
            self.outbox.mark(path, False, {**info, "error": (err or "").strip()[-500:]})
            self.stats["failed"] += 1
            with self._lock:
                self._failed.add(path)

    def close(self, drain_timeout: float = 30.0) -> dict[str, int]:
        """Let the queue drain for up to ``drain_timeout`` s, then stop; returns the counts."""
        deadline = time.monotonic() + max(0.0, drain_timeout)
        while time.monotonic() < deadline and (self.queue.unfinished_tasks or self._backlog.is_set()):
            time.sleep(0.05)
        self._stop.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()  # the frame it was sending stays pending
        self._thread.join(timeout=10)
        return {**self.stats, "pending": len(self.outbox.pending())}
