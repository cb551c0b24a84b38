"""The outbox: a folder of finished, cloaked frames, each with a JSON sidecar and an upload state.

A frame is finished when its image exists: the sidecar is written first, the image last, both
atomically (temporary file + rename), so a watcher or an uploader never sees half a frame. The
sidecar records the image's name, size and sha256 (of the exact bytes written, computed before
either file is written). Upload state lives next to it as markers: ``NAME.uploaded`` (done) or
``NAME.upload-error`` (the last try failed; retried by the next run). Anything without
``.uploaded`` is pending, which makes uploads resumable across runs and crashes.

Only frames this tool wrote are ever handed to an uploader (``verify``): the name is one the tool
generates (``frame-YYYYMMDD-HHMMSS-NNNNNN.png``, ASCII digits, 6 or more of them for the frame
number, nothing after the extension), the entry is a regular file and not a symbolic link, and
its sidecar is a JSON object naming that image with its size and sha256 and saying whether every
face in it is protected. Anything else that looks like a frame is *rejected*: never uploaded, and
reported by ``scan`` with the reason.

A frame the tool wrote whose sidecar says ``"protected": false`` (a face failed the self-check and
``--on-fail keep`` kept it as it is) is *held*: keeping a frame on disk is one choice, uploading an
unprotected face is another, so it is not uploaded unless the uploader is told to
(``unprotected_ok``, ``edgecloak run --upload-unprotected``). Held frames are counted on their own
(``held``), not as rejects: nothing is wrong with them, so they do not make ``--upload-pending``
fail, and they stay in the outbox until a run with ``--upload-unprotected`` uploads them or a
person removes them.

Opening the outbox removes what a killed run left behind: temporary files, and sidecars whose
image was never written (a kill between the two writes; only sidecars of the tool's own frame
names and format are touched). A writer holds an exclusive lock on the folder (``flock``), so a
second session cannot write into it and an ``--upload-pending`` run never mistakes the sidecar of
a frame being written right now for a leftover.

Example:
    >>> box = Outbox(Path("outbox"))                                    # doctest: +SKIP
    >>> path = box.write(OutputFormat().encode(rgb), {"faces": [], "protected": True})     # doctest: +SKIP
    >>> box.pending() == [path]                                         # doctest: +SKIP
    True
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import stat
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecloak.errors import OutputError
from edgecloak.runtime.atomic import write_bytes_atomic, write_json_atomic
from edgecloak.runtime.image_io import OutputFormat

# Exactly the names ``write`` generates: 6-digit zero padding (so names sort in order up to frame
# 999999), more digits after that. [0-9] with re.ASCII and fullmatch: ``\d`` would take Unicode
# digits and ``$`` a trailing newline, neither of which the tool ever writes.
_NUMBER = r"([0-9]{6}|[1-9][0-9]{6,})"
FRAME_NAME = re.compile(rf"frame-[0-9]{{8}}-[0-9]{{6}}-{_NUMBER}\.(png|jpg)", re.ASCII)
SIDECAR_NAME = re.compile(rf"frame-[0-9]{{8}}-[0-9]{{6}}-{_NUMBER}\.json", re.ASCII)
# Every name the tool writes is made of these characters (checked by the tests; ``{}`` relies on it).
SAFE_NAME = re.compile(r"[A-Za-z0-9.-]+", re.ASCII)
# Entries that look like frames without being names the tool writes: reported, never uploaded.
_LOOKS_LIKE_FRAME = re.compile(r"frame-.*\.(png|jpg)\s*", re.IGNORECASE | re.DOTALL)
# Any number the tool may have used, markers included, so a restart never reuses one.
_USED_NUMBER = re.compile(r"frame-[0-9]{8}-[0-9]{6}-([0-9]+)\.", re.ASCII)
_MAX_SIDECAR_BYTES = 1 << 20  # a real sidecar is a few KB; never read a planted giant into memory
_MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff"}
# What ``verify`` answers for a frame the tool wrote with an unprotected face (``--on-fail keep``):
# not a reject, a hold (``scan`` lists it in ``held``).
UNPROTECTED = "a face in it is not protected (kept by --on-fail keep)"


@dataclass
class OutboxScan:
    """What ``Outbox.scan`` found: verified frames (oldest first), those to upload, those held, and rejects.

    ``held``: frames the tool wrote, not uploaded, whose sidecar says a face is not protected; they
    are in ``pending`` instead when the scan was asked for them (``unprotected_ok``).
    """

    frames: list[Path] = field(default_factory=list)
    pending: list[Path] = field(default_factory=list)
    held: list[Path] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)  # (path, why it is not uploaded)


class Outbox:
    """Finished frames in ``folder``: ``frame-YYYYMMDD-HHMMSS-NNNNNN.png`` (or ``.jpg``) + ``.json``.

    ``writer=True`` (the default) takes the folder's lock for the object's lifetime (``close``
    releases it) and raises ``OutputError`` when another process holds it; ``writer=False``
    (uploads only) cleans leftovers only when no writer is active. ``removed_sidecars`` counts
    the leftover sidecars removed on opening.

    Example:
        >>> with Outbox(Path("outbox"), OutputFormat.named("jpg", 90)) as box:     # doctest: +SKIP
        ...     box.write(result.encoded, {"faces": [], "protected": True}).name
        'frame-20250101-120000-000001.jpg'
    """

    def __init__(self, folder: Path, output: OutputFormat | None = None, *, writer: bool = True):
        self.folder = Path(folder)
        self.output = output or OutputFormat()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot create or open the outbox ({exc.strerror or exc}); "
                              "check the path and its permissions") from exc
        self._lock_fd: int | None = lock_fd
        self._finalizer = weakref.finalize(self, os.close, lock_fd)
        locked = self._try_lock()
        if writer and not locked:
            self.close()
            raise OutputError(f"{self.folder}: another edgecloak run is writing into this outbox; "
                              "stop it or give this run its own --outbox")
        self.removed_sidecars = 0
        if locked:  # no writer is mid-frame: what is half-done now was left by a killed run
            for stale in self.folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
            self.removed_sidecars = self._remove_orphan_sidecars()
            if not writer:
                self._unlock()
        numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := _USED_NUMBER.match(p.name))]
        self._next = max(numbers, default=0) + 1  # never reuse a number: a restart must not overwrite
        # name -> ((inode, size, mtime), protected) of a frame that verified
        self._verified: dict[str, tuple[tuple[int, int, int], bool]] = {}

    # -- writing ----------------------------------------------------------------------------
    def write(self, data: bytes, sidecar: dict[str, Any]) -> Path:
        """Write one finished frame: ``data`` (the encoded file) and its sidecar; returns the image path.

        The sidecar goes first and records the image's name, size and sha256 (hashed from ``data``
        before anything is written), so a frame exists only once both are complete. Neither file
        ever replaces an existing one.

        Example:
            >>> box.write(OutputFormat().encode(rgb), {"faces": [], "protected": True}).name          # doctest: +SKIP
            'frame-20250101-120000-000001.png'
        """
        suffix = self.output.suffix
        if not isinstance(data, (bytes, bytearray)) or not bytes(data[:8]).startswith(_MAGIC[suffix]):
            raise ValueError(f"expected the encoded bytes of a {self.output.describe()} file")
        if not isinstance(sidecar.get("protected"), bool):  # the uploader decides on it: it must be said
            raise ValueError("the sidecar must say whether every face in the frame is protected ('protected')")
        data = bytes(data)
        while True:  # skip numbers a concurrent hand (or an old marker) already took
            stem = f"frame-{time.strftime('%Y%m%d-%H%M%S')}-{self._next:06d}"
            self._next += 1
            if not any(os.path.lexists(self.folder / f"{stem}{ext}") for ext in (".png", ".jpg", ".json")):
                break
        image_path = self.folder / f"{stem}{suffix}"
        body = {**sidecar, "image": image_path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        write_json_atomic(self.folder / f"{stem}.json", body, overwrite=False)
        write_bytes_atomic(image_path, data, overwrite=False)
        return image_path

    def mark(self, image: Path, uploaded: bool, info: dict[str, Any]) -> None:
        """Record an upload outcome next to the frame (``.uploaded``, or ``.upload-error``)."""
        marker = image.with_suffix(".uploaded" if uploaded else ".upload-error")
        write_json_atomic(marker, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})
        if uploaded:
            image.with_suffix(".upload-error").unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------------
    def verify(self, image: Path, *, fresh: bool = False, unprotected_ok: bool = False) -> str | None:
        """Why ``image`` is not a frame to upload, or None when it is a finished, protected frame this tool wrote.

        Checks the name, that it is a regular file and not a symlink (``lstat``), that its sidecar
        is a JSON object naming it with its size and sha256, and that the sidecar says every face
        is protected: ``"protected": false`` answers ``UNPROTECTED`` (a hold, not a reject) unless
        ``unprotected_ok``. ``fresh`` re-hashes even a file verified before (the uploader does,
        right before running the command).

        Example:
            >>> box.verify(box.folder / "frame-20250101-120000-000001.png")       # doctest: +SKIP
            >>> box.verify(box.folder / "passwd-link.png")                        # doctest: +SKIP
            'not a frame name this tool writes'
        """
        image = Path(image)
        if image.parent != self.folder or FRAME_NAME.fullmatch(image.name) is None:
            return "not a frame name this tool writes"
        try:
            st = os.lstat(image)
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        if stat.S_ISLNK(st.st_mode):
            return "a symbolic link, not a frame this tool wrote"
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        known = self._verified.get(image.name)
        if not fresh and known is not None and known[0] == identity:
            return None if known[1] or unprotected_ok else UNPROTECTED
        car = _read_sidecar(image.with_suffix(".json"))
        if isinstance(car, str):
            return car
        if not isinstance(car.get("sha256"), str) or not isinstance(car.get("bytes"), int):
            return "its sidecar has no size and sha256 (not written by edgecloak)"
        if car.get("image") != image.name:
            return "its sidecar names another image"
        protected = car.get("protected")
        if not isinstance(protected, bool):
            return "its sidecar does not say whether its faces are protected (not written by edgecloak run)"
        if car["bytes"] != st.st_size:
            return f"{st.st_size} bytes, its sidecar says {car['bytes']} (changed after it was written)"
        digest = _sha256_regular_file(image)
        if digest is None:
            return "not a regular file (it changed while being checked)"
        if digest != car["sha256"]:
            return "its sha256 differs from its sidecar's (changed after it was written)"
        self._verified[image.name] = (identity, protected)
        return None if protected or unprotected_ok else UNPROTECTED

    def scan(self, *, unprotected_ok: bool = False) -> OutboxScan:
        """Verified frames (numeric order: frame 1000000 comes after 999999), pending, held and rejected ones.

        A frame whose sidecar says a face is not protected is in ``held`` (not uploaded), or in
        ``pending`` with ``unprotected_ok``.
        """
        out = OutboxScan()
        good: list[tuple[int, str, Path, bool]] = []
        for path in self.folder.iterdir():
            if (m := FRAME_NAME.fullmatch(path.name)) is None and not _LOOKS_LIKE_FRAME.fullmatch(path.name):
                continue
            reason = self.verify(path, unprotected_ok=unprotected_ok)
            if reason is None or reason == UNPROTECTED:
                good.append((int(m.group(1)), path.name, path, reason is None))
            else:
                out.rejected.append((path, reason))
        good.sort()
        out.frames = [p for _, _, p, _ in good]
        waiting = [(p, ok) for _, _, p, ok in good if not p.with_suffix(".uploaded").exists()]
        out.pending = [p for p, ok in waiting if ok]
        out.held = [p for p, ok in waiting if not ok]
        out.rejected.sort(key=lambda r: r[0].name)
        return out

    def frames(self) -> list[Path]:
        """Verified finished frames (protected or not), oldest first."""
        return self.scan().frames

    def pending(self) -> list[Path]:
        """Verified, protected frames not uploaded yet, oldest first (held and rejected ones are in ``scan``)."""
        return self.scan().pending

    # -- the lock and leftovers -------------------------------------------------------------
    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _remove_orphan_sidecars(self) -> int:
        """Remove sidecars of the tool's own frames whose image was never written; how many."""
        removed = 0
        for path in self.folder.iterdir():
            if SIDECAR_NAME.fullmatch(path.name) is None:
                continue
            stem = path.name[: -len(".json")]
            if any(os.path.lexists(self.folder / f"{stem}{ext}") for ext in (".png", ".jpg")):
                continue
            car = _read_sidecar(path)
            # only a sidecar in the tool's own format, naming its own image: never a user's file
            if isinstance(car, dict) and car.get("image") in (f"{stem}.png", f"{stem}.jpg") \
                    and isinstance(car.get("sha256"), str):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def close(self) -> None:
        """Release the folder's lock (also done when the object is collected)."""
        self._finalizer()
        self._lock_fd = None

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_sidecar(path: Path) -> dict[str, Any] | str:
    """The sidecar as a dict, or why it is not a usable one (missing, a link, too big, not a JSON object)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "no sidecar"
    except OSError as exc:
        return f"sidecar cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(st.st_mode):
        return "its sidecar is not a regular file"
    if st.st_size > _MAX_SIDECAR_BYTES:
        return "its sidecar is too large to be one edgecloak wrote"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            body = json.loads(fh.read(_MAX_SIDECAR_BYTES + 1))
    except (OSError, ValueError):
        return "its sidecar is not valid JSON"
    if not isinstance(body, dict):
        return "its sidecar is not a JSON object"
    return body


def _sha256_regular_file(path: Path) -> str | None:
    """sha256 of ``path``'s bytes, opened without following a link; None when it is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not hang us
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
