"""The batch manifest: one JSON line per processed photo, appended and fsynced as results arrive.

A line records the source (path relative to SRC, sha256), the output (path relative to DST,
sha256), the faces with their self-check figures, the status (``done``, ``no-face``,
``no-face-copied``, ``dropped``, ``error``), the error, the seconds, the worker and the key of the
settings it was made under (``worker.spec_key``). The latest line of a source wins. A re-run skips
a source whose latest line is ``done`` (or ``no-face-copied``) with the same source hash, the same
settings key and an output that still has the recorded hash; everything else is processed again.
A run killed mid-line leaves a truncated last line, which is ignored.

Example:
    >>> manifest = Manifest(Path("cloaked/manifest.jsonl"))          # doctest: +SKIP
    >>> manifest.finished(task, spec_key(spec))                      # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgecloak.errors import OutputError

from .plan import Task, sha256_file

FINISHED = ("done", "no-face-copied")  # statuses whose output stands; the others are retried


class Manifest:
    """Append-only JSONL of records, with the latest record per source kept in memory.

    Any line that is not a JSON object with a string ``source`` is ignored (a line cut by a kill,
    a stray edit, junk): it can only make a photo be redone, never count as finished. Every failure
    to read or write the file is one ``OutputError``.

    Example:
        >>> manifest = Manifest(Path("cloaked/manifest.jsonl"))      # doctest: +SKIP
        >>> manifest.append({"source": "a.jpg", "status": "error"})  # doctest: +SKIP
        >>> manifest.close()                                         # doctest: +SKIP
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.latest: dict[str, dict[str, Any]] = {}
        self._fd: int | None = None
        if not (self.path.exists() or self.path.is_symlink()):
            return
        if not self.path.is_file():  # a folder, or a device such as /dev/zero that never ends
            raise OutputError(f"{self.path}: the manifest is not a regular file; move it away or choose another DST")
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot read the manifest ({exc.strerror or exc}); "
                              "check that it is readable") from exc
        for line in text.splitlines():
            record = _parse(line)
            if record is not None:
                self.latest[record["source"]] = record

    def finished(self, task: Task, key: str) -> bool:
        """Does the manifest show this photo done, from its current bytes, under these settings, with
        its output intact? Files are hashed only for a finished line (a fresh run reads nothing)."""
        record = self.latest.get(task.relative)
        if not record or record.get("status") not in FINISHED or record.get("spec_key") != key:
            return False
        try:  # unreadable now: not finished, and the worker records why
            return (sha256_file(task.source) == record.get("source_sha256") and task.destination.is_file()
                    and sha256_file(task.destination) == record.get("output_sha256"))
        except OSError:
            return False

    def append(self, record: dict[str, Any]) -> None:
        """Write one record as a line, fsynced: a kill loses at most the line in flight.

        Unbuffered (``os.write`` on an ``O_APPEND`` descriptor): a failed write leaves nothing queued
        that a later ``close`` would try again, and a line cut short by a full disk is ignored on
        reading like a line cut by a kill. ``OutputError`` when the line cannot be written.
        """
        line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # RDWR: to read its last byte
                if not _ends_a_line(self._fd):
                    line = b"\n" + line  # end a line a killed run cut off
            view = memoryview(line)
            while view:  # a short write (disk nearly full) is continued, or fails with the reason
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write the manifest ({exc.strerror or exc}); "
                              "free some space or choose another DST, then run again to resume") from exc
        self.latest[record["source"]] = record

    def close(self) -> None:
        """Close the file (idempotent). Nothing is buffered, so this cannot lose a line."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:  # e.g. a network filesystem reporting a late write error
                raise OutputError(f"{self.path}: cannot close the manifest ({exc.strerror or exc})") from exc


def _parse(line: str) -> dict[str, Any] | None:
    """The record on one manifest line, or None for anything else (never raises)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # cut by a kill, junk, or nested deeper than json can go
        return None
    if not isinstance(record, dict) or not isinstance(record.get("source"), str):
        return None
    return record


def _ends_a_line(fd: int) -> bool:
    """Is the file empty or does it end with a newline?"""
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"
