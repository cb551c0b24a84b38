"""Atomic file writes: a temporary file in the same folder, fsync, then rename (or link) into place.

Readers see the old file or the new one, never half of one. This is the one writer of finished
files: images (``image_io.save_image_atomic`` encodes, then calls ``write_bytes_atomic``), JSON
sidecars, results and markers. The temporary file is removed on any way out, Ctrl-C included, so
an interrupted write leaves nothing behind.

``overwrite=False`` never replaces an existing file, race-free: the finished temporary file is
hard-linked to the destination (``link`` fails when the name exists) instead of renamed over it.

A tool that writes a file itself (an ONNX exporter) writes into ``staged_file``'s temporary path
instead, which is renamed into place only when the tool finished without error.

Example:
    >>> write_json_atomic(Path("/tmp/x.json"), {"ok": True})             # doctest: +SKIP
    >>> write_bytes_atomic(Path("/tmp/x.png"), data, overwrite=False)     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgecloak.errors import OutputError


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True,
                       mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (mode 0666 less the umask, or the replaced file's); return the path.

    ``overwrite=False`` raises ``OutputError`` when ``path`` exists, and never replaces it.
    ``mode`` sets the file's mode exactly (0o600: private to its owner from the first byte on).

    Raises:
        OutputError: missing or read-only folder, disk full, the file exists (``overwrite=False``).

    Example:
        >>> write_bytes_atomic("out/photo.png", png_bytes, overwrite=False)   # doctest: +SKIP
        PosixPath('out/photo.png')
    """
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write in {path.parent} ({_reason(exc)}); "
                          "check the folder exists and is writable") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600: give it what open() would (0666 less the umask; a user with
        # umask 077 keeps private files private), or the mode of the file it replaces
        if mode is None:
            mode = path.stat().st_mode & 0o7777 if overwrite and path.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
    except OSError as exc:
        if isinstance(exc, FileExistsError):
            raise OutputError(f"{path}: already exists and was not replaced; pass --overwrite to replace it "
                              "or choose another output") from None
        raise OutputError(f"{path}: could not write ({_reason(exc)}); check free space and that the folder "
                          "is writable") from exc
    finally:  # on success the name is gone already; on any failure (Ctrl-C too) nothing is left behind
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)  # make the rename itself durable; best effort
    return path


def write_json_atomic(path: str | os.PathLike[str], body: Any, *, overwrite: bool = True) -> Path:
    """JSON (indented, ``str`` for unknown types) to ``path`` atomically; ``OutputError`` on failure.

    Example:
        >>> write_json_atomic("out/summary.json", {"faces": 1})   # doctest: +SKIP
    """
    return write_bytes_atomic(path, json.dumps(body, indent=1, default=str).encode(), overwrite=overwrite)


@contextlib.contextmanager
def staged_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` for a tool that writes the file itself; moved to ``path``
    (mode 0666 less the umask) when the block ends without error, removed on any way out.

    Example:
        >>> with staged_file("cache/model.onnx") as tmp:       # doctest: +SKIP
        ...     torch.onnx.export(net, args, tmp)
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600; caches are meant to be shared and read
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _link_no_clobber(tmp: Path, path: Path) -> None:
    """Put ``tmp`` at ``path`` unless ``path`` exists (``FileExistsError``), atomically where links exist."""
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # a filesystem without hard links (FAT, some FUSE mounts): check, then rename (a small window)
        if path.exists() or path.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.replace(tmp, path)


def _umask() -> int:
    """This process's umask, read without changing it where the system tells (Linux), else set and reset."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # briefly changed: only where /proc cannot tell
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the data itself is already synced
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
