"""Frames from a camera index, a video file or a stream URL (OpenCV capture), as RGB uint8.

Example:
    >>> with FrameSource("clip.mp4") as source:     # doctest: +SKIP
    ...     frame = source.read()                    # H x W x 3 RGB, or None at the end
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgecloak.errors import CameraError


class FrameSource:
    """An OpenCV capture. ``live`` is True for cameras and streams (the end of frames is a loss).

    A video file is read up to its first frame on opening: a file OpenCV opens but that yields no
    frame at all (an empty video, something that is not a video) raises ``CameraError`` there and
    then, instead of ending a session at once as if it were a finished video.
    """

    def __init__(self, spec: str):
        self.spec = str(spec)
        if self.spec.isdigit():
            target: int | str = int(self.spec)
            self.live = True
        elif "://" in self.spec:
            target, self.live = self.spec, True
        else:
            if not Path(self.spec).is_file():
                raise CameraError(f"{self.spec}: no such video file (give a camera index, a video file or a stream URL)")
            target, self.live = self.spec, False
        self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            self.capture.release()
            raise CameraError(f"{self.spec}: cannot open this "
                              f"{'camera or stream' if self.live else 'video file; is it a video?'}")
        fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if fps > 0 else None  # the source's nominal rate, when it says
        self._first: np.ndarray | None = None
        if not self.live:
            self._first = self._read()
            if self._first is None:
                self.capture.release()
                raise CameraError(f"{self.spec}: no frame could be read; is it a video?")

    def read(self) -> np.ndarray | None:
        """The next frame (RGB uint8), or None when the video ended or the camera was lost."""
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return self._read()

    def _read(self) -> np.ndarray | None:
        ok, frame = self.capture.read()
        if not ok or frame is None or frame.ndim != 3:
            return None
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.capture.release()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
