"""Atomic small-file writes: a temporary file in the same folder, fsync, rename (0644).

Readers see the old file or the new one, never half of one. Images go through
``image_io.save_image_atomic``; this is for JSON sidecars, results and markers.

Example:
    >>> write_json_atomic(Path("/tmp/x.json"), {"ok": True})   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgecloak.errors import OutputError


def write_json_atomic(path: Path, body: Any) -> None:
    """JSON (indented, ``str`` for unknown types) to ``path`` atomically; ``OutputError`` on failure."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are meant to be read
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: could not write ({exc.strerror or exc}); check free space") from exc
