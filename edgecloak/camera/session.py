"""A capture session: frames in, cloaked frames out, until the video ends, the camera is lost, or
a signal asks to stop.

Modes: ``continuous`` cloaks every frame; ``snapshot`` cloaks a frame every ``every`` frames, when
``trigger_file`` appears (it is then removed), or on SIGUSR1. A frame that continues the previous
emitted one (at most ``warm_gap`` frames later) warm-starts each face from the previous mask,
moved with the face, with ``warm_steps`` iterations and the same target: it passes the
self-check far more often than a cold start, so frames need fewer iterations on average. Each
frame is encoded in the output format (PNG, or JPEG at ``jpeg_quality``) and self-checked on the
decoded bytes, and exactly those checked bytes are written. Frames whose faces fail the self-check
follow the cloaker's ``SafetyPolicy`` (dropped by default); frames with no face are not emitted
(nothing vouches for them). A frame written with a face that failed the self-check (``--on-fail
keep``) is counted as ``unprotected``, not as cloaked, and its sidecar says ``"protected": false``:
the uploader holds it (not uploaded) unless ``upload_unprotected`` (``--upload-unprotected``).
SIGINT/SIGTERM finish the frame in hand (writes are atomic), drain the upload queue for
``drain_timeout`` seconds, and leave the rest pending for the next run.

How a session ends (after the summary is written to the outbox and logged): a lost live camera
raises ``CameraError`` (exit 8); frames were cloaked but every one failed the self-check and was
dropped (``dropped > 0``, ``emitted == 0``) raises ``ProtectionFailedError`` (exit 4); otherwise
it returns the summary, and a final line says how many frames were dropped, or written with an
unprotected face, when some were (``--on-fail keep`` is the user's choice: still exit 0). A video
file that yields no frame at all is a ``CameraError`` too, raised by ``FrameSource`` on opening.

The summary is written as ``session-YYYYMMDD-HHMMSS-PID.json`` (``-PID-2.json`` and on when that
name is taken), never over an earlier session's.

Example:
    >>> summary = CameraSession(cloaker, RunSettings(source="clip.mp4", outbox=Path("out"))).run()  # doctest: +SKIP
    >>> summary["emitted"], summary["fps"]                                                         # doctest: +SKIP
    (12, 1.4)
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import cv2

from edgecloak.errors import CameraError, NoFaceError, OutputError, ProtectionFailedError, UsageError
from edgecloak.runtime.atomic import write_json_atomic
from edgecloak.runtime.image_io import OutputFormat

from .outbox import Outbox
from .source import FrameSource
from .upload import Uploader


@dataclass
class RunSettings:
    """What ``edgecloak run`` was asked to do (recorded in each sidecar's ``run`` section)."""

    source: str
    outbox: Path
    mode: str = "snapshot"  # or "continuous"
    every: int | None = None  # snapshot: every Nth frame (default 30 when no trigger is given)
    trigger_file: Path | None = None
    max_frames: int | None = None  # stop after reading this many frames
    # iterations of a face continuing from the previous frame. Default: the cloaker's own count,
    # measured best on the edge preset (2-core CPU, 10-frame clip): 16 warm steps passed the
    # self-check first time (0.95 s/frame); 4 or 8 needed a retry (1.26 / 1.12 s); cold frames
    # took 16 or 48 steps (2.1 s/frame), and the first two were dropped after 48.
    warm_steps: int | None = None
    warm_gap: int = 5
    fmt: str = "png"
    jpeg_quality: int | None = None
    upload_cmd: str | None = None
    upload_unprotected: bool = False  # upload frames with a face kept unprotected (--on-fail keep) too
    queue_size: int = 8
    drain_timeout: float = 30.0
    preview: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("snapshot", "continuous"):
            raise UsageError(f"unknown mode {self.mode!r}; choose snapshot or continuous")
        if self.every is not None and self.every < 1:
            raise UsageError("--every must be >= 1")
        if self.mode == "snapshot" and self.every is None and self.trigger_file is None:
            self.every = 30
        self.output  # a bad format or --jpeg-quality fails here, before any model loads
        if self.upload_cmd is not None:
            Uploader.parse(self.upload_cmd)  # and so does an --upload-cmd that cannot be split
        elif self.upload_unprotected:
            raise UsageError("--upload-unprotected needs --upload-cmd")

    @property
    def output(self) -> OutputFormat:
        """How frames are encoded (and self-checked as decoded): PNG, or JPEG at ``jpeg_quality``.

        Example:
            >>> RunSettings(source="0", outbox=Path("o"), fmt="jpg", jpeg_quality=80).output.describe()
            'JPEG quality 80'
        """
        return OutputFormat.named(self.fmt, self.jpeg_quality)


class CameraSession:
    """Runs one capture session with a ``Cloaker`` (single-threaded capture; uploads in the background)."""

    def __init__(self, cloaker, settings: RunSettings, log: Callable[[str], None] = print):
        self.cloaker, self.settings, self.log = cloaker, settings, log
        self.warm_steps = settings.warm_steps or int(cloaker.config.steps)
        self._stop_reason: str | None = None
        self._snapshot = threading.Event()

    # -- signals --------------------------------------------------------------------------
    def _on_stop(self, signum, _frame) -> None:
        if self._stop_reason is not None:  # a second Ctrl-C: stop now (writes are atomic anyway)
            raise KeyboardInterrupt
        self._stop_reason = f"signal {signal.Signals(signum).name}"

    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {s: signal.signal(s, self._on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda *_: self._snapshot.set())
        return previous

    # -- the loop -------------------------------------------------------------------------
    def _wanted(self, index: int) -> bool:
        s = self.settings
        if s.mode == "continuous":
            return True
        if self._snapshot.is_set():
            self._snapshot.clear()
            return True
        if s.trigger_file is not None and s.trigger_file.exists():
            s.trigger_file.unlink(missing_ok=True)
            return True
        return s.every is not None and index % s.every == 0

    def run(self) -> dict[str, Any]:
        """Capture until the end, a loss or a signal; returns (and logs) the session summary."""
        s = self.settings
        output = s.output
        outbox = Outbox(s.outbox, output)  # holds the outbox's lock until the summary is written
        try:
            summary, last_drop = self._capture(outbox, output)
            write_summary(outbox.folder, summary)
        finally:
            outbox.close()
        self.log(json.dumps(summary))
        cloaked = summary["emitted"] - summary["unprotected"]
        line = (f"{cloaked} cloaked frame(s) of {summary['read']} read ({summary['stopped']}); "
                f"{summary['fps']} frames/s emitted, {summary['cloak_seconds_per_frame']} s cloaking per frame")
        if summary["unprotected"]:
            line += (f"; {summary['unprotected']} frame(s) written with a face NOT protected (--on-fail keep)"
                     + ("" if s.upload_unprotected or not s.upload_cmd
                        else ", held in the outbox, not uploaded (--upload-unprotected uploads them)"))
        if summary["dropped"]:
            line += (f"; {summary['dropped']} frame(s) dropped: a face failed the self-check "
                     "(the lines above say why; --on-fail blur-face or keep emits them anyway)")
        self.log(line)
        raise_for_outcome(summary, s.source, last_drop)
        return summary

    def _capture(self, outbox: Outbox, output: OutputFormat) -> tuple[dict[str, Any], str | None]:
        """The capture loop; returns the summary and the last drop's message."""
        s = self.settings
        source = FrameSource(s.source)
        if outbox.removed_sidecars:
            self.log(f"removed {outbox.removed_sidecars} sidecar(s) of frames a killed run never finished writing")
        uploader, previous_signals = None, {}
        last_drop: str | None = None
        # emitted: frames written, unprotected ones included; unprotected: of those, frames with a face
        # that failed the self-check and was kept as it is (--on-fail keep)
        counts = {"read": 0, "emitted": 0, "unprotected": 0, "dropped": 0, "no_face": 0, "warm_started_faces": 0,
                  "faces": 0}
        busy = 0.0
        warm, last_emitted = None, None
        started = time.perf_counter()
        try:
            if s.upload_cmd:
                uploader = Uploader(s.upload_cmd, outbox, s.queue_size, log=self.log,
                                    upload_unprotected=s.upload_unprotected)
                left = uploader.resume()
                if left:
                    self.log(f"resuming {left} pending upload(s)")
            previous_signals = self._install_signals()
            # the handlers are in place: from here SIGUSR1 takes a snapshot (before, it would end the process)
            self.log(f"capturing {s.source} into {outbox.folder} ({s.mode}; Ctrl-C stops, SIGUSR1 takes a snapshot)")
            started = time.perf_counter()
            while self._stop_reason is None:
                if s.max_frames is not None and counts["read"] >= s.max_frames:
                    self._stop_reason = "max frames"
                    break
                frame = source.read()
                if frame is None:
                    self._stop_reason = "camera lost" if source.live else "end of video"
                    break
                counts["read"] += 1
                if not self._wanted(counts["read"]):
                    continue
                if last_emitted is None or counts["read"] - last_emitted > s.warm_gap:  # warm_gap 0: never warm
                    warm = None
                t0 = time.perf_counter()
                try:
                    # checked on the decoded bytes of the output format; those very bytes are written
                    result = self.cloaker.protect(frame, warm=warm, output=output)
                except NoFaceError:
                    counts["no_face"] += 1
                    continue
                except ProtectionFailedError as err:
                    counts["dropped"] += 1
                    last_drop = str(err)
                    self.log(f"frame {counts['read']}: dropped: {err}")
                    continue
                seconds = time.perf_counter() - t0
                busy += seconds
                path = outbox.write(result.encoded, self._sidecar(counts["read"], result, seconds, warm is not None))
                counts["emitted"] += 1
                counts["unprotected"] += not result.protected
                counts["faces"] += len(result.faces)
                counts["warm_started_faces"] += sum(f.warm_started for f in result.faces)
                if uploader is not None:
                    uploader.submit(path)
                if s.preview:
                    self._show(result.image)
                warm, last_emitted = result.warm_start(self.warm_steps), counts["read"]
        finally:
            wall = time.perf_counter() - started
            source.close()
            for sig, handler in previous_signals.items():
                signal.signal(sig, handler)
            uploads = uploader.close(s.drain_timeout) if uploader is not None else None
            if s.preview:
                self._close_preview()
        summary = {
            "stopped": self._stop_reason, **counts, "seconds": round(wall, 3),
            "fps": round(counts["emitted"] / wall, 3) if wall > 0 else None,
            "cloak_seconds_per_frame": round(busy / counts["emitted"], 3) if counts["emitted"] else None,
            "format": output.describe(), "uploads": uploads, "removed_sidecars": outbox.removed_sidecars,
            "backend": self.cloaker.backend, "outbox": str(outbox.folder),
        }
        return summary, last_drop

    def _sidecar(self, index: int, result, seconds: float, warm: bool) -> dict[str, Any]:
        cfg = self.cloaker.config
        return {
            "frame": index, "source": self.settings.source, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "backend": self.cloaker.backend, "seconds": round(seconds, 3), "warm_start": warm,
            "format": result.output.describe() if result.output is not None else None,
            # measured on the written file's pixels (JPEG error included); the mask alone is <= eps
            "protected": result.protected, "max_abs_change": result.max_abs_change,
            "mask_max_abs_change": result.mask_max_abs_change,
            "settings": {"eps": cfg.eps, "steps": cfg.steps, "warm_steps": self.warm_steps},
            "policy": asdict(self.cloaker.policy),
            "faces": [{k: v for k, v in vars(f).items()} for f in result.faces],
        }

    def _show(self, image) -> None:
        try:
            cv2.imshow("edgecloak (cloaked)", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.waitKey(1)
        except cv2.error:
            self.log("no display support here (headless OpenCV); preview turned off")
            self.settings.preview = False

    @staticmethod
    def _close_preview() -> None:
        try:
            cv2.destroyAllWindows()
        except cv2.error:
            pass


def write_summary(folder: Path, summary: dict[str, Any]) -> Path:
    """Write a session's summary as ``session-YYYYMMDD-HHMMSS-PID.json`` in ``folder``, never over another.

    Two sessions may end in the same second (one after the other on an outbox, or in one process):
    a taken name moves on to ``-PID-2.json``, ``-PID-3.json``, ...; the write itself never replaces
    a file (``overwrite=False``), so a name taken between the check and the write moves on too.

    Example:
        >>> write_summary(Path("outbox"), {"read": 0}).name       # doctest: +SKIP
        'session-20250101-120000-4242.json'
    """
    stem = f"session-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for n in itertools.count(1):
        path = folder / (f"{stem}.json" if n == 1 else f"{stem}-{n}.json")
        if os.path.lexists(path):
            continue
        try:
            return write_json_atomic(path, summary, overwrite=False)
        except OutputError:
            if not os.path.lexists(path):  # not a name clash: the folder cannot be written
                raise
    raise AssertionError("unreachable")


def raise_for_outcome(summary: dict[str, Any], source: str, last_drop: str | None = None) -> None:
    """Raise the error a finished session's summary calls for; return when it succeeded.

    A lost live camera: ``CameraError`` (exit 8). Frames were cloaked and every one failed the
    self-check (``dropped > 0`` and ``emitted == 0``): ``ProtectionFailedError`` (exit 4), since
    the user asked for cloaked frames and got none. A mix of emitted and dropped frames, or no
    face at all, succeeds: the emitted frames are good, and the summary counts the rest.

    Example:
        >>> raise_for_outcome({"stopped": "end of video", "emitted": 3, "dropped": 2, "read": 5}, "clip.mp4")
        >>> raise_for_outcome({"stopped": "end of video", "emitted": 0, "dropped": 2, "read": 5}, "clip.mp4")
        Traceback (most recent call last):
        ...
        edgecloak.errors.ProtectionFailedError: clip.mp4: all 2 cloaked frame(s) failed the self-check and were dropped, nothing was emitted
    """
    emitted, dropped = summary["emitted"], summary["dropped"]
    if summary["stopped"] == "camera lost":
        unprotected = summary.get("unprotected", 0)
        kept = f", {unprotected} of them with a face not protected" if unprotected else ""
        raise CameraError(f"{source}: the camera or stream was lost after {summary['read']} frame(s); "
                          f"{emitted} frame(s) are in the outbox{kept} ({dropped} dropped); "
                          "check the camera or the stream and run again")
    if dropped > 0 and emitted == 0:
        last = f"; the last: {last_drop}" if last_drop else ""
        raise ProtectionFailedError(f"{source}: all {dropped} cloaked frame(s) failed the self-check and were "
                                    f"dropped, nothing was emitted{last}")
