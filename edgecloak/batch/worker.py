"""One batch worker: a Cloaker loaded once, turning tasks into written outputs and records.

``WorkerSpec`` is what every executor ships to its workers (plain data, picklable); the worker
is the same object in this process, in a local process and in a Ray actor, so every executor
writes the same bytes and the same records.

Example:
    >>> worker = PhotoWorker(WorkerSpec(preset="fast"))                       # doctest: +SKIP
    >>> worker.process(task)["status"]                                        # doctest: +SKIP
    'done'
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecloak.cloaker import Cloaker
from edgecloak.enrolment import DEFAULT_PROFILE_STEPS
from edgecloak.errors import EdgecloakError, InputImageError, NoFaceError, OutputError, ProtectionFailedError, UsageError
from edgecloak.recipe import Recipe, resolve
from edgecloak.runtime.atomic import write_bytes_atomic
from edgecloak.runtime.image_io import OutputFormat, load_image
from edgecloak.runtime.profile import load_profile

from .manifest import _ends_a_line, _parse
from .plan import Task, sha256_file

# DST/.edgecloak-journal/HOST-PID.jsonl: each worker's record of the bytes it is about to put where,
# written before the output is renamed into place (see ``PhotoWorker.process``)
JOURNAL = ".edgecloak-journal"


@dataclass(frozen=True)
class WorkerSpec:
    """How to build each worker's Cloaker and write its outputs.

    ``output`` is built (and its JPEG quality checked) by the driver before any worker starts; every
    worker encodes with it and self-checks the decoded bytes, so what is judged is what is written.

    Example:
        >>> WorkerSpec(preset="fast", output=OutputFormat.named("jpg", 90)).output.suffix
        '.jpg'
    """

    preset: str = "balanced"
    bundle: str | None = None
    backend: str = "auto"
    settings: dict[str, Any] = field(default_factory=dict)  # TIPIMConfig overrides
    policy: dict[str, Any] = field(default_factory=dict)  # SafetyPolicy fields (default: the preset's)
    output: OutputFormat = field(default_factory=OutputFormat)  # PNG (lossless) unless told otherwise
    copy_faceless: bool = False  # write photos without a detected face (metadata stripped)
    threads: int | None = None  # CPU threads per worker (None: all of this process's)
    surrogates: tuple[str, ...] | None = None  # the preset's, spelled out by ``resolved``
    num_targets: int | None = None
    # a cloak profile (its name in every worker's $EDGECLOAK_HOME/profiles; the digest the driver
    # read, so that a worker holding another profile of that name refuses to start) and its steps
    profile: str | None = None
    profile_sha256: str | None = None
    profile_steps: int = DEFAULT_PROFILE_STEPS

    def recipe(self) -> Recipe:
        """The recipe this spec asks for (``edgecloak.recipe.resolve``; ``UsageError`` when it is bad)."""
        return resolve(None if self.bundle is not None else self.preset, self.bundle, surrogates=self.surrogates,
                       num_targets=self.num_targets, settings=self.settings, policy=self.policy)


class PhotoWorker:
    """Cloaks one photo at a time; never raises for a photo's own failure (it becomes the record)."""

    def __init__(self, spec: WorkerSpec):
        if spec.threads:
            os.environ["EDGECLOAK_THREADS"] = str(spec.threads)  # read when the sessions start below
        self.spec = spec
        profile = None
        if spec.profile is not None:  # checked before the models load
            profile = load_profile(spec.profile)
            if spec.profile_sha256 is not None and profile.sha256 != spec.profile_sha256:
                raise UsageError(f"profile {spec.profile!r} on {socket.gethostname()} is not the one the batch was "
                                 "started with; copy the same profile to every node")
        self.cloaker = Cloaker.from_recipe(spec.recipe(), spec.backend)
        if profile is not None:
            self.cloaker.use_profile(profile, spec.profile_steps)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._journal: tuple[Path, int] | None = None  # (path, descriptor), opened on the first write

    def close(self) -> None:
        """Close the journal (idempotent); a worker that is dropped or exits closes it too."""
        journal, self._journal = self._journal, None
        if journal is not None:
            try:
                os.close(journal[1])
            except OSError:
                pass

    @property
    def backend(self) -> str:
        return self.cloaker.backend

    def process(self, task: Task, root: Path | None = None) -> dict[str, Any]:
        """Cloak ``task`` into its destination (atomically) and return its manifest record.

        ``root``: DST, to record the output relative to it. The photo is encoded in ``spec.output``
        inside ``Cloaker.protect``, which self-checks the decoded pixels; the record's ``margin``,
        ``max_abs_change`` (written file vs source) and ``output_sha256`` are all of the bytes written.
        A file at the destination is replaced (or, for a photo that did not finish, removed) only when
        ``may_replace`` allows it; otherwise the photo is an ``error`` and the file is left alone.

        Example:
            >>> worker.process(Task("a.jpg", Path("src/a.jpg"), Path("dst/a.png")), Path("dst"))["status"]  # doctest: +SKIP
            'done'
        """
        t0 = time.perf_counter()
        output = self.spec.output
        record: dict[str, Any] = {"source": task.relative, "source_sha256": None, "output": None,
                                  "output_sha256": None, "faces": [], "error": None, "worker": self.name}
        try:
            record["source_sha256"] = sha256_file(task.source)
            if may_replace(task, root) is False:  # a file that is not ours stands there: no work, nothing touched
                record.update(status="error", error=not_ours(task))
                return record
            image = load_image(task.source)
            task.destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                result = self.cloaker.protect(image, output=output)
            except NoFaceError:
                if not self.spec.copy_faceless:
                    record.update(status="no-face", error="no face found (not written; --copy-faceless writes it)")
                    return record
                data = output.encode(image)  # the same encoder: no metadata, the same format as the cloaked ones
                written = load_image(data) if output.lossy else image
                record.update(status="no-face-copied", max_abs_change=_max_abs_change(image, written),
                              mask_max_abs_change=0)
            else:
                data = result.encoded
                record.update(status="done", max_abs_change=result.max_abs_change,
                              mask_max_abs_change=result.mask_max_abs_change,
                              faces=[{"box": [round(float(v), 1) for v in f.box], "target": f.target,
                                      "action": f.action, "margin": None if f.margin is None else round(f.margin, 4),
                                      "steps": f.steps, "reason": f.reason} for f in result.faces])
            claim = may_replace(task, root)  # again: a file may have appeared, or ours been edited, meanwhile
            if claim is False:
                for written_only in ("faces", "max_abs_change", "mask_max_abs_change"):
                    record.pop(written_only, None)
                record.update(status="error", error=not_ours(task), faces=[])
                return record
            output_path = task.destination.relative_to(root).as_posix() if root else str(task.destination)
            # the hash of the bytes this worker writes (not a re-read: a file changed meanwhile is not ours)
            digest = hashlib.sha256(data).hexdigest()
            if root is not None:  # first the journal: a kill between the rename and the manifest line
                self._record_intent(root, {"source": task.relative, "output": output_path, "output_sha256": digest})
            # nothing there: never replace what appears from now on (race-free); ours: replace it
            write_bytes_atomic(task.destination, data, overwrite=bool(claim))
            record["output"], record["output_sha256"] = output_path, digest
        except ProtectionFailedError as exc:
            record.update(status="dropped", error=str(exc))
        except (InputImageError, EdgecloakError) as exc:
            record.update(status="error", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug or a decoder crash on one file must not stop a library run
            record.update(status="error", error=f"{type(exc).__name__}: {exc}")
        finally:
            record["seconds"] = round(time.perf_counter() - t0, 3)
            if record.get("status") not in ("done", "no-face-copied"):
                # DST mirrors the manifest: no output of ours stands for a photo that did not finish now.
                # Only our own output (or anything, with --overwrite) is removed; a user's file stays.
                try:
                    if may_replace(task, root):
                        task.destination.unlink()
                except OSError as exc:
                    record["error"] = f"{record.get('error')}; and the old output could not be removed ({exc})"
        return record

    def _record_intent(self, root: Path, entry: dict[str, Any]) -> None:
        """Append ``entry`` (source, output, output_sha256) to this worker's journal, fsynced, before
        the output is renamed into place: a run killed after the rename but before the driver wrote
        the manifest line (Ray actors even finish their photo after the driver is gone) leaves an
        output that ``may_replace`` still knows as batch's own. ``OutputError`` (and then nothing is
        written) when the line cannot be written. The job removes the journals after a clean run."""
        path = root / JOURNAL / f"{self.name.replace(':', '-')}.jsonl"
        line = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        try:
            if self._journal is None or self._journal[0] != path:
                self.close()
                path.parent.mkdir(exist_ok=True)
                self._journal = (path, os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644))
                if not _ends_a_line(self._journal[1]):
                    line = b"\n" + line  # end a line a kill cut off
            view = memoryview(line)
            while view:
                view = view[os.write(self._journal[1], view):]
            os.fsync(self._journal[1])
        except OSError as exc:
            self._drop_empty_journal(path)
            raise OutputError(f"{path}: cannot record the output about to be written ({exc.strerror or exc}); "
                              "nothing was written") from exc

    def _drop_empty_journal(self, path: Path) -> None:
        """After a failed first write (a full disk): leave no empty journal or folder behind."""
        try:
            empty = self._journal is not None and os.fstat(self._journal[1]).st_size == 0
        except OSError:
            empty = False
        self.close()
        try:
            if empty:
                path.unlink()
            path.parent.rmdir()  # only when empty
        except OSError:
            pass


def may_replace(task: Task, root: Path | None = None) -> bool | None:
    """What stands at ``task.destination``: None (nothing), True (this tool's own output, or anything
    with ``--overwrite``) or False (something else: a user's file, an output edited since, a link, a
    folder), never to be replaced or removed. Never raises (unreadable counts as not ours).

    Batch's own output: its sha256 is the one the source's latest manifest line recorded
    (``task.replaces``), or, for an output whose line a kill lost, the one a worker's journal under
    ``root`` recorded for this source at this place before renaming it in."""
    dest = task.destination
    try:
        if not (dest.exists() or dest.is_symlink()):
            return None
        if task.overwrite:
            return True
        if dest.is_symlink() or not dest.is_file():
            return False
        digest = sha256_file(dest)
        if task.replaces and digest == task.replaces:
            return True
        return root is not None and _journaled(root, task, digest)
    except OSError:
        return False


def _journaled(root: Path, task: Task, digest: str) -> bool:
    """Does a worker's journal record writing exactly these bytes for this source at this place? Read
    only for a file the manifest does not account for (rare), so the cost stays off the common path."""
    folder = root / JOURNAL
    if not folder.is_dir():
        return False
    try:
        output = task.destination.relative_to(root).as_posix()
    except ValueError:
        return False
    for journal in sorted(folder.glob("*.jsonl")):
        if journal.is_symlink() or not journal.is_file():
            continue
        for line in journal.read_text(encoding="utf-8", errors="replace").splitlines():
            entry = _parse(line)
            if (entry is not None and entry["source"] == task.relative and entry.get("output") == output
                    and entry.get("output_sha256") == digest):
                return True
    return False


def not_ours(task: Task) -> str:
    """The one-line reason a photo is not written over a file it does not own."""
    return f"{task.destination} exists and was not written by edgecloak batch; pass --overwrite to replace it"


def _max_abs_change(original: np.ndarray, written: np.ndarray) -> int:
    """Largest |written - original| over the photo (0 for a lossless copy)."""
    return int(np.abs(written.astype(np.int16) - original.astype(np.int16)).max())


def spec_dict(spec: WorkerSpec) -> dict[str, Any]:
    """The spec as recorded in the summary."""
    return asdict(spec)


def resolved(spec: WorkerSpec) -> WorkerSpec:
    """The spec with its preset spelled out (surrogates, K, settings, retries), resolved once by the
    driver: every worker, on every node, then runs the same recipe whatever presets it has installed.
    A bad preset or setting is one ``UsageError`` here, before any worker starts."""
    recipe = spec.recipe()
    if spec.profile is not None:
        spec = replace(spec, profile_sha256=load_profile(spec.profile).sha256)
    if spec.bundle is not None:
        return spec
    return replace(spec, surrogates=recipe.surrogates, num_targets=recipe.num_targets, settings=recipe.settings,
                   policy={"retries": recipe.policy.retries, **spec.policy})


def spec_key(spec: WorkerSpec) -> str:
    """A short hash of everything that decides an output's bytes (not the thread count): a manifest
    line made under another key is redone, so changing the preset, a setting, the policy, the output
    format or --copy-faceless never leaves an output made under the old rules.

    Example:
        >>> spec_key(WorkerSpec()) == spec_key(WorkerSpec(threads=4)) != spec_key(WorkerSpec(preset="fast"))
        True
    """
    fields = {k: v for k, v in asdict(spec).items() if k not in ("threads", "output")}
    if spec.profile is None:  # spelled as before profiles existed: libraries finished then keep their keys
        for k in ("profile", "profile_sha256", "profile_steps"):
            fields.pop(k)
    # Spelled as before outputs were self-checked on their decoded bytes: a PNG decodes to exactly the
    # checked pixels, so a library finished as PNG keeps its key and is not redone. A JPEG line made
    # before then was judged on pixels that were never written: the "checked" field redoes it.
    fields["jpeg_quality"] = spec.output.jpeg_quality if spec.output.lossy else None
    if spec.output.lossy:
        fields["checked"] = "decoded"
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
