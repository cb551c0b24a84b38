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
    """Append-only JSONL of records, with the latest record per source kept in memory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.latest: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    self.latest[record["source"]] = record
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill
        self._fh = None

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
        """Write one record as a line (flushed and fsynced: a kill loses at most the line in flight)."""
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")
                if self._fh.tell() and not self.path.read_bytes().endswith(b"\n"):
                    self._fh.write("\n")  # end a line a killed run cut off
            self._fh.write(json.dumps(record, sort_keys=True) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write the manifest ({exc.strerror or exc})") from exc
        self.latest[record["source"]] = record

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
