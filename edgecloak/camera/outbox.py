"""The outbox: a folder of finished, cloaked frames, each with a JSON sidecar and an upload state.

A frame is finished when its image exists: the sidecar is written first, the image last, both
atomically (temporary file + rename), so a watcher or an uploader never sees half a frame. Upload
state lives next to it as markers: ``NAME.uploaded`` (done) or ``NAME.upload-error`` (the last try
failed; retried by the next run). Anything without ``.uploaded`` is pending, which makes uploads
resumable across runs and crashes. Temporary files a killed process left behind are removed when
the outbox is opened.

Example:
    >>> box = Outbox(Path("outbox"))                                    # doctest: +SKIP
    >>> path = box.write(frame, {"faces": []})                          # doctest: +SKIP
    >>> box.pending() == [path]                                         # doctest: +SKIP
    True
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecloak.errors import OutputError
from edgecloak.runtime.atomic import write_json_atomic
from edgecloak.runtime.image_io import save_image_atomic

_NAME = re.compile(r"^frame-\d{8}-\d{6}-(\d{6})\.(png|jpg)$")


class Outbox:
    """Finished frames in ``folder``: ``frame-YYYYMMDD-HHMMSS-NNNNNN.png`` + ``.json``."""

    def __init__(self, folder: Path, fmt: str = "png", jpeg_quality: int | None = None):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot create the outbox ({exc.strerror or exc})") from exc
        self.fmt, self.jpeg_quality = fmt, jpeg_quality
        for stale in self.folder.glob(".*.tmp"):  # a killed run's half-written files
            stale.unlink(missing_ok=True)
        numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := _NAME.match(p.name))]
        self._next = max(numbers, default=0) + 1  # never reuse a name: a restart must not overwrite

    def write(self, image: np.ndarray, sidecar: dict[str, Any]) -> Path:
        """Write one finished frame (sidecar first, image last); returns the image path."""
        stem = f"frame-{time.strftime('%Y%m%d-%H%M%S')}-{self._next:06d}"
        self._next += 1
        image_path = self.folder / f"{stem}.{self.fmt}"
        write_json_atomic(self.folder / f"{stem}.json", {**sidecar, "image": image_path.name})
        save_image_atomic(image_path, image, jpeg_quality=self.jpeg_quality)
        return image_path

    def frames(self) -> list[Path]:
        """Finished frames (image and sidecar both present), oldest first."""
        return sorted(p for p in self.folder.iterdir() if _NAME.match(p.name) and p.with_suffix(".json").exists())

    def pending(self) -> list[Path]:
        """Finished frames not uploaded yet, oldest first."""
        return [p for p in self.frames() if not p.with_suffix(".uploaded").exists()]

    def mark(self, image: Path, uploaded: bool, info: dict[str, Any]) -> None:
        """Record an upload outcome next to the frame."""
        marker = image.with_suffix(".uploaded" if uploaded else ".upload-error")
        write_json_atomic(marker, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})
        if uploaded:
            image.with_suffix(".upload-error").unlink(missing_ok=True)
