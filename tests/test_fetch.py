"""The pinned fetch, on a real (small) registry package in a fresh cache."""

from __future__ import annotations

import dataclasses

import pytest

from edgecloak.errors import FetchError
from edgecloak.export.zoo import fetch

SMALL = "facenet-pytorch"  # 1.9 MB wheel
MEMBER = "facenet_pytorch/data/pnet.pt"


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLOAK_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_fetch_verifies_unpacks_only_members_and_is_idempotent(fresh_home):
    path = fetch.member_path(SMALL, MEMBER)
    assert path.is_file() and path.stat().st_size > 10_000
    root = fetch.package_dir(SMALL)
    unpacked = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert unpacked == [".complete", *sorted(fetch.package_sources()[SMALL].members)]
    archive = fresh_home / "downloads" / fetch.package_sources()[SMALL].filename
    assert fetch.sha256_of(archive) == fetch.package_sources()[SMALL].sha256
    stamp = archive.stat().st_mtime_ns
    fetch.ensure_package(SMALL, progress=False)
    assert archive.stat().st_mtime_ns == stamp  # nothing fetched again


def test_interrupted_fetch_resumes_from_a_corrupt_download(fresh_home):
    fetch.ensure_package(SMALL, progress=False)
    archive = fresh_home / "downloads" / fetch.package_sources()[SMALL].filename
    (fetch.package_dir(SMALL) / ".complete").unlink()  # as if killed before the unpack finished
    archive.write_bytes(archive.read_bytes()[:1000])  # and the download was cut short
    fetch.ensure_package(SMALL, progress=False)
    assert fetch.is_fetched(SMALL)
    assert fetch.sha256_of(archive) == fetch.package_sources()[SMALL].sha256


def test_hash_mismatch_is_refused_and_nothing_is_unpacked(fresh_home, monkeypatch):
    real = fetch.package_sources()
    tampered = dict(real)
    tampered[SMALL] = dataclasses.replace(real[SMALL], sha256="0" * 64)
    monkeypatch.setattr(fetch, "package_sources", lambda: tampered)
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch.ensure_package(SMALL, progress=False)
    assert not fetch.package_dir(SMALL).exists()
    assert not (fresh_home / "downloads" / real[SMALL].filename).exists()


def test_unknown_package_and_member_are_clear_errors(fresh_home):
    with pytest.raises(FetchError, match="unknown package"):
        fetch.ensure_package("no-such-package")
    with pytest.raises(FetchError, match="not a pinned member"):
        fetch.member_path(SMALL, "facenet_pytorch/__init__.py")


def test_unreachable_client_is_a_clear_error(fresh_home, monkeypatch):
    real = fetch.package_sources()
    broken = dict(real)
    broken[SMALL] = dataclasses.replace(real[SMALL], spec="facenet-pytorch==0.0.0.999")
    monkeypatch.setattr(fetch, "package_sources", lambda: broken)
    with pytest.raises(FetchError, match="pip failed"):
        fetch.ensure_package(SMALL, progress=False)
