"""``edgecloak batch``: a real photo library cloaked inline, by local processes and on a local Ray
instance, with the same bytes; resumable after a kill; bad files recorded and skipped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecloak.batch.manifest import Manifest
from edgecloak.batch.plan import plan_tasks, sha256_file
from edgecloak.cli.main import main
from edgecloak.errors import UsageError

# a cheap, deterministic budget: one surrogate, 8 steps; a face failing the self-check is blurred
# (still written), so every readable photo with a face finishes
FAST = ["--preset", "edge", "--steps", "8", "--on-fail", "blur-face", "--retries", "0"]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Four real face photos in a nested tree, a corrupt JPEG, a faceless image and a text file."""
    from PIL import Image

    from edgecloak.export.zoo.photos import identity_photos

    root = tmp_path_factory.mktemp("library")
    photos = identity_photos()
    picks = [photos[name][0] for name in sorted(photos)[:4]]
    for i, src in enumerate(picks):
        folder = root / ("2024/summer" if i % 2 else "family")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / f"photo{i}.jpg")
    (root / "family" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000))  # a JPEG header, then junk
    Image.new("RGB", (320, 240), (90, 140, 200)).save(root / "sky.png")
    (root / "notes.txt").write_text("not a photo")
    (root / ".hidden.jpg").write_bytes(picks[0].read_bytes())
    return root


def _records(dst: Path) -> dict[str, dict]:
    return Manifest(dst / "manifest.jsonl").latest


def _outputs(dst: Path) -> dict[str, bytes]:
    return {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*.png")}


def test_the_tree_is_mirrored_and_collisions_keep_their_names(tmp_path):
    (tmp_path / "src/a").mkdir(parents=True)
    for name in ("a/x.jpg", "a/x.png", "b.JPG", "C.jpg", "c.png", ".secret.jpg"):
        (tmp_path / "src" / name).write_bytes(b"")
    (tmp_path / "src/out").mkdir()
    (tmp_path / "src/out/old.png").write_bytes(b"")
    tasks = plan_tasks(tmp_path / "src", tmp_path / "src/out")
    assert {t.relative: t.destination.relative_to(tmp_path / "src/out").as_posix() for t in tasks} == {
        "a/x.jpg": "a/x.jpg.png", "a/x.png": "a/x.png.png", "b.JPG": "b.png",  # DST inside SRC not walked
        "C.jpg": "C.jpg.png", "c.png": "c.png.png"}  # names that meet on a case-insensitive disk too
    (tmp_path / "src/a/x.jpg.png").write_bytes(b"")  # would land on x.jpg's output: refused, not overwritten
    with pytest.raises(UsageError, match="both be written"):
        plan_tasks(tmp_path / "src", tmp_path / "src/out")
    with pytest.raises(UsageError):
        plan_tasks(tmp_path / "src", tmp_path / "src")
    with pytest.raises(UsageError):  # SRC inside DST: outputs could land on originals
        plan_tasks(tmp_path / "src/a", tmp_path / "src")
    with pytest.raises(UsageError):
        plan_tasks(tmp_path / "missing", tmp_path / "out")


def test_a_line_cut_by_a_kill_is_ignored_and_the_next_line_starts_clean(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps({"source": "a.jpg", "status": "done"}) + "\n" + '{"source": "b.jpg", "sta')
    manifest = Manifest(path)
    assert set(manifest.latest) == {"a.jpg"}
    manifest.append({"source": "c.jpg", "status": "error"})
    manifest.close()
    assert set(Manifest(path).latest) == {"a.jpg", "c.jpg"}


@pytest.mark.parametrize("use_ray", [False, True], ids=["processes", "ray"])
def test_fan_out_runs_every_item_with_a_share_of_the_cores(use_ray):
    """The mechanism eval and calibrate fan out on: every item once, each worker told its core share."""
    if use_ray:
        pytest.importorskip("ray", reason="Ray is in the dev extra; not installed here")
    from edgecloak.batch.executors import cores, fan_out

    assert sorted(fan_out(json.dumps, [3, 1, 2, 4], workers=2, use_ray=use_ray)) == ["1", "2", "3", "4"]
    shares = list(fan_out(os.getenv, ["EDGECLOAK_THREADS"] * 2, workers=2, use_ray=use_ray))
    assert shares == [str(max(1, cores() // 2))] * 2
    assert "EDGECLOAK_THREADS" not in os.environ  # the parent's environment is left as it was


@pytest.mark.slow
def test_inline_processes_and_ray_write_the_same_bytes_and_record_bad_files(library, tmp_path):
    pytest.importorskip("ray", reason="Ray is in the dev extra; not installed here")
    runs = {"inline": [], "processes": ["--workers", "2"], "ray": ["--ray", "--workers", "2"]}
    outputs = {}
    for name, extra in runs.items():
        dst = tmp_path / name
        code = main(["batch", str(library), str(dst), *FAST, *extra])
        assert code == 4  # not every photo finished: the corrupt one and the faceless one
        records = _records(dst)
        assert set(records) == {"family/photo0.jpg", "2024/summer/photo1.jpg", "family/photo2.jpg",
                                "2024/summer/photo3.jpg", "family/broken.jpg", "sky.png"}
        assert records["family/broken.jpg"]["status"] == "error" and records["family/broken.jpg"]["error"]
        assert records["sky.png"]["status"] == "no-face"
        for rel, record in records.items():
            if rel.startswith(("family/photo", "2024")):
                assert record["status"] == "done" and record["faces"]
                out = dst / record["output"]
                assert sha256_file(out) == record["output_sha256"]
                assert record["source_sha256"] == sha256_file(library / rel)
        assert not (dst / "family/broken.png").exists() and not (dst / "sky.png").exists()
        summary = json.loads((dst / "summary.json").read_text())
        assert summary["processed"] == 6 and summary["statuses"] == {"done": 4, "error": 1, "no-face": 1}
        assert summary["photos_per_second"] > 0
        outputs[name] = _outputs(dst)
    assert len(outputs["inline"]) == 4
    assert outputs["processes"] == outputs["inline"]  # same seed, same bytes, whatever ran it
    assert outputs["ray"] == outputs["inline"]
    for photo in library.rglob("photo*.jpg"):  # the originals are untouched
        assert photo.read_bytes()[:2] == b"\xff\xd8"


@pytest.mark.slow
def test_a_killed_run_resumes_with_only_what_was_missing(library, tmp_path):
    dst = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgecloak.cli.main", "batch", str(library), str(dst), *FAST]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it hard once the first photo is recorded as done
        if (dst / "manifest.jsonl").exists() and '"done"' in (dst / "manifest.jsonl").read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {k: v for k, v in _records(dst).items() if v["status"] == "done"}
    assert 1 <= len(before) < 4, "the run should have been killed part-way"

    summary_json = tmp_path / "summary.json"
    assert main(["batch", str(library), str(dst), *FAST, "--json", str(summary_json)]) == 4
    summary = json.loads(summary_json.read_text())
    assert summary["skipped_already_done"] == len(before)
    assert summary["processed"] == 6 - len(before)  # the rest, the two bad files included
    assert not list(dst.rglob(".*.tmp"))
    records = _records(dst)
    assert sum(r["status"] == "done" for r in records.values()) == 4
    for rel in before:  # finished photos were not redone
        assert records[rel]["output_sha256"] == before[rel]["output_sha256"]

    # a changed source and a deleted output are redone; everything else is skipped
    changed = library / "family" / "photo0.jpg"
    original = changed.read_bytes()
    try:
        changed.write_bytes(original + b"\0")  # same picture, different bytes
        (dst / records["2024/summer/photo1.jpg"]["output"]).unlink()
        assert main(["batch", str(library), str(dst), *FAST, "--json", str(summary_json)]) == 4
        summary = json.loads(summary_json.read_text())
        assert summary["skipped_already_done"] == 2 and summary["processed"] == 4
    finally:
        changed.write_bytes(original)

    # other settings: every photo is redone (an output made under the old rules never stands)
    assert main(["batch", str(library), str(dst), *FAST, "--steps", "9", "--json", str(summary_json)]) == 4
    summary = json.loads(summary_json.read_text())
    assert summary["skipped_already_done"] == 0 and summary["processed"] == 6


def test_a_worker_that_cannot_start_stops_the_run_with_one_line(library, tmp_path, capsys):
    """A broken spec fails in the workers: the pool reports it instead of restarting them forever."""
    code = main(["batch", str(library), str(tmp_path / "out"), "--bundle", str(tmp_path / "no-bundle"),
                 "--workers", "2"])
    assert code != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgecloak:")]
    assert len(errors) == 1 and "worker process could not start" in errors[0]
    assert main(["batch", str(library), str(tmp_path / "out"), "--eps", "100"]) == 2  # checked before any worker
