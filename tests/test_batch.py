"""``edgecloak batch``: a real photo library cloaked inline, by local processes and on a local Ray
instance; resumable after a kill on every executor; bad files recorded and skipped; lossy outputs
judged on the bytes written; metadata stripped; a full disk stops the run with one line.

Ray is part of the dev extra: a missing ``ray`` fails these tests. ``EDGECLOAK_SKIP_RAY=1`` skips
the Ray cases on purpose (a machine where Ray cannot run), and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgecloak.batch.manifest import Manifest
from edgecloak.batch.plan import Task, plan_tasks, sha256_file
from edgecloak.cli.main import main
from edgecloak.errors import OutputError, ProtectionFailedError, UsageError

# a cheap, deterministic budget: one surrogate, 8 steps; a face failing the self-check is blurred
# (still written), so every readable photo with a face finishes
FAST = ["--preset", "edge", "--steps", "8", "--on-fail", "blur-face", "--retries", "0"]
# settings no face can pass: a 1/255 budget for one step, no retry (or the mask rounds away to nothing)
HOPELESS = ["--preset", "edge", "--steps", "1", "--eps", "1", "--retries", "0", "--on-fail", "drop"]
EPS = 12  # the edge preset's budget
FACE_PHOTOS = {"family/photo0.jpg", "2024/summer/photo1.jpg", "family/photo2.jpg", "2024/summer/photo3.jpg"}


def require_ray() -> None:
    """Ray is in the dev extra: import it (a missing ray fails the test), unless skipped on purpose."""
    if os.environ.get("EDGECLOAK_SKIP_RAY") == "1":
        pytest.skip("EDGECLOAK_SKIP_RAY=1: the Ray cases are skipped on purpose")
    import ray  # noqa: F401  -- ImportError here is a failure: `pip install -e ".[dev]"` installs it


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


def small_library(library: Path, dest: Path, *names: str) -> Path:
    """A copy of some of ``library``'s files (same relative paths) under ``dest``."""
    for name in names:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(library / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def checker():
    """The edge preset's cloaker (mobileface, ONNX Runtime): what FAST cloaks with, to re-check outputs."""
    from edgecloak.cloaker import Cloaker

    return Cloaker.load(preset="edge", backend="onnxruntime")


def recheck_margins(cloaker, source: Path, output: Path, faces: list[dict]) -> list[float | None]:
    """Score a written file as a recognizer downstream would, independently of the batch run: find each
    recorded face again in the source and in the written file, and return its margin (surrogate mean
    of cos(written, target) - cos(written, clean face)); None for a face never cloaked (no target)."""
    from edgecloak.runtime.face_region import box_iou
    from edgecloak.runtime.image_io import load_image

    original, written = load_image(source), load_image(output)
    protector, bank = cloaker.protector, cloaker.targets
    clean_faces, written_faces = cloaker.detector.detect(original), cloaker.detector.detect(written)
    margins = []
    for face in faces:
        if face["target"] is None:  # too small to cloak: nothing to re-check
            margins.append(None)
            continue
        clean = max(clean_faces, key=lambda f: box_iou(f.box, face["box"]))
        assert box_iou(clean.box, face["box"]) > 0.9  # the recorded face is a face of the source
        again = max(written_faces, key=lambda f: box_iou(f.box, clean.box), default=None)
        landmarks = again.landmarks if again is not None and box_iou(again.box, clean.box) > 0.3 else clean.landmarks
        user, after = protector.embed_face(original, clean.landmarks), protector.embed_face(written, landmarks)
        t = bank.identities.index(face["target"])
        margins.append(float(np.mean([after[s][0] @ bank.embeddings[s][t] - after[s][0] @ user[s][0]
                                      for s in protector.surrogate_ids])))
    return margins


def one_error_line(stderr: str) -> str:
    """The one ``edgecloak: error:`` line of a failed run (progress bars aside), with no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in re.split(r"[\r\n]", stderr) if line.startswith("edgecloak:")]
    assert len(errors) == 1 and errors[0].startswith("edgecloak: error:"), stderr
    return errors[0]


def _records(dst: Path) -> dict[str, dict]:
    return Manifest(dst / "manifest.jsonl").latest


def _outputs(dst: Path) -> dict[str, bytes]:
    return {p.relative_to(dst).as_posix(): p.read_bytes() for p in dst.rglob("*.png")}


# -- planning and the manifest --------------------------------------------------------------------
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


def test_links_that_would_put_an_output_on_an_original_are_refused(tmp_path):
    """Sources and destinations are resolved: a source linking into DST, a folder of DST linking into
    SRC, or a (hard) link of a source standing where its output goes, is refused before any work (the
    DST-inside-SRC check used to compare unresolved paths, and the output replaced the original)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "family").mkdir(parents=True)
    dst.mkdir()
    (src / "family/photo0.png").write_bytes(b"an original")
    assert [t.relative for t in plan_tasks(src, dst)] == ["family/photo0.png"]  # no link: fine

    (dst / "a.png").write_bytes(b"an original kept in DST")
    (src / "a.png").symlink_to(dst / "a.png")  # a source that is a file in DST
    with pytest.raises(UsageError, match="inside the output folder") as err:
        plan_tasks(src, dst)
    assert "\n" not in str(err.value)
    (src / "a.png").unlink()

    (dst / "family").symlink_to(src / "family")  # DST/family/photo0.png would be SRC/family/photo0.png
    with pytest.raises(UsageError, match="inside the source folder"):
        plan_tasks(src, dst)
    (dst / "family").unlink()

    (dst / "family").mkdir()
    os.link(src / "family/photo0.png", dst / "family/photo0.png")  # a hard link: the same file, no symlink
    with pytest.raises(UsageError, match="same file as the source family/photo0.png"):
        plan_tasks(src, dst)
    (dst / "family/photo0.png").unlink()

    out = src / "out"  # DST inside SRC is allowed (never walked), but not a source that links into it
    out.mkdir()
    (out / "x.png").write_bytes(b"an output")
    assert [t.relative for t in plan_tasks(src, out)] == ["family/photo0.png"]
    (src / "link.png").symlink_to(out / "x.png")
    with pytest.raises(UsageError, match="inside the output folder"):
        plan_tasks(src, out)


def test_a_line_cut_by_a_kill_is_ignored_and_the_next_line_starts_clean(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text(json.dumps({"source": "a.jpg", "status": "done"}) + "\n" + '{"source": "b.jpg", "sta')
    manifest = Manifest(path)
    assert set(manifest.latest) == {"a.jpg"}
    manifest.append({"source": "c.jpg", "status": "error"})
    manifest.close()
    assert set(Manifest(path).latest) == {"a.jpg", "c.jpg"}


@pytest.fixture(scope="module")
def finished_pair(tmp_path_factory) -> tuple[Task, Task, str, str]:
    """Two photos on disk: ``done`` with its real finished manifest line, ``todo`` with none."""
    root = tmp_path_factory.mktemp("pair")
    tasks = []
    for name in ("done", "todo"):
        (root / f"{name}.jpg").write_bytes(f"source of {name}".encode())
        (root / f"{name}.png").write_bytes(f"output of {name}".encode())
        tasks.append(Task(f"{name}.jpg", root / f"{name}.jpg", root / f"{name}.png"))
    done, todo = tasks
    line = json.dumps({"source": "done.jpg", "status": "done", "spec_key": "k", "source_sha256": sha256_file(done.source),
                       "output_sha256": sha256_file(done.destination), "output": "done.png"}, sort_keys=True)
    return done, todo, line, "k"


def _garbage_lines():
    """Lines that are not a manifest record: text, non-object JSON, objects without a usable
    ``source``, records of the unfinished photo with made-up hashes, and cut-off records."""
    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                               lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                           max_size=3), max_leaves=8)
    forged = st.fixed_dictionaries({"source": st.just("todo.jpg"),
                                    "status": st.sampled_from(["done", "no-face-copied", "error", "dropped"]),
                                    "spec_key": st.sampled_from(["k", "other"]),
                                    "source_sha256": st.text("0123456789abcdef", min_size=64, max_size=64),
                                    "output_sha256": st.text("0123456789abcdef", min_size=64, max_size=64)})
    return st.one_of(
        st.text(max_size=60).filter(lambda s: "\n" not in s),
        json_values.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
        st.dictionaries(st.text(max_size=6).filter(lambda k: k != "source"), json_values, max_size=3).map(json.dumps),
        st.fixed_dictionaries({"source": json_values.filter(lambda v: not isinstance(v, str))}).map(json.dumps),
        forged.map(json.dumps),
        forged.map(json.dumps).flatmap(lambda s: st.integers(0, len(s) - 1).map(lambda n: s[:n])),  # cut by a kill
        st.binary(max_size=40).map(lambda b: b.decode("latin-1").replace("\n", " ")),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=st.lists(_garbage_lines(), max_size=6), after=st.lists(_garbage_lines(), max_size=6),
       with_finished_line=st.booleans(), trailing_newline=st.booleans())
@example(before=["[" * 100_000], after=[], with_finished_line=True, trailing_newline=True)  # json's recursion limit
@example(before=[], after=['{"source": ["done.jpg"], "status": "error"}'], with_finished_line=True, trailing_newline=False)
def test_garbage_manifest_lines_are_ignored_and_never_mark_a_photo_finished(
        finished_pair, tmp_path_factory, before, after, with_finished_line, trailing_newline):
    """Whatever junk a manifest holds (a kill, a stray edit, a disk error), reading it never raises,
    never counts an unfinished photo as finished, and junk never un-finishes a finished one; the next
    append still lands on a line of its own."""
    done, todo, line, key = finished_pair
    path = tmp_path_factory.mktemp("manifest") / "manifest.jsonl"
    lines = [*before, *([line] if with_finished_line else []), *after]
    path.write_bytes(("\n".join(lines) + ("\n" if trailing_newline else "")).encode("utf-8", "surrogatepass"))
    manifest = Manifest(path)
    assert not manifest.finished(todo, key)
    assert manifest.finished(done, key) == with_finished_line
    manifest.append({"source": "new.jpg", "status": "error"})
    manifest.close()
    again = Manifest(path)
    assert again.latest["new.jpg"] == {"source": "new.jpg", "status": "error"}
    assert again.finished(done, key) == with_finished_line and not again.finished(todo, key)


def test_a_manifest_that_is_not_a_file_is_one_output_error(tmp_path):
    (tmp_path / "manifest.jsonl").mkdir()
    with pytest.raises(OutputError, match="not a regular file"):
        Manifest(tmp_path / "manifest.jsonl")
    (tmp_path / "dev.jsonl").symlink_to("/dev/zero")  # reading it would never end
    with pytest.raises(OutputError, match="not a regular file"):
        Manifest(tmp_path / "dev.jsonl")


def test_the_settings_key_of_a_png_library_did_not_change_with_checked_outputs():
    """Outputs are now self-checked on their decoded bytes. A PNG decodes to exactly the checked
    pixels, so a finished PNG library keeps its key (an upgrade does not redo it); a JPEG line from
    before was judged on pixels never written, so JPEG keys changed (redone)."""
    from edgecloak.batch.worker import WorkerSpec, spec_key
    from edgecloak.runtime.image_io import OutputFormat

    # keys computed by the previous release (WorkerSpec(jpeg_quality=None / 90))
    assert spec_key(WorkerSpec()) == "6654f2f3c5053683"
    assert spec_key(WorkerSpec(preset="edge", settings={"steps": 8}, policy={"on_fail": "drop", "retries": 0},
                               copy_faceless=True)) == "b9cca47fee2b5534"
    jpeg = spec_key(WorkerSpec(output=OutputFormat.named("jpg", 90)))
    assert jpeg != "1a568929a8f615a7" and jpeg != spec_key(WorkerSpec(output=OutputFormat.named("jpg", 91)))
    assert spec_key(WorkerSpec(threads=3)) == spec_key(WorkerSpec())  # threads never decide the bytes


# -- the fan-out mechanism -----------------------------------------------------------------------
@pytest.mark.parametrize("use_ray", [False, True], ids=["processes", "ray"])
def test_fan_out_runs_every_item_with_a_share_of_the_cores(use_ray):
    """The mechanism eval and calibrate fan out on: every item once, each worker told its core share."""
    if use_ray:
        require_ray()
    from edgecloak.batch.executors import cores, fan_out

    parent = os.environ.get("EDGECLOAK_THREADS")  # set or not, whatever the caller runs the tests with
    assert sorted(fan_out(json.dumps, [3, 1, 2, 4], workers=2, use_ray=use_ray)) == ["1", "2", "3", "4"]
    shares = list(fan_out(os.getenv, ["EDGECLOAK_THREADS"] * 2, workers=2, use_ray=use_ray))
    assert shares == [str(max(1, cores() // 2))] * 2
    assert os.environ.get("EDGECLOAK_THREADS") == parent  # the parent's environment is left as it was


# -- whole runs ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_inline_processes_and_ray_agree_and_record_bad_files(library, tmp_path, checker):
    """Every executor gives the same statuses and faces, outputs within eps that pass the self-check.
    Bytes are compared only between runs at the same thread count (processes and Ray: cores/2 each, 1
    on one core): float sums differ across thread counts and CPUs, so the inline run (all cores) is
    held to what is stable instead. Targets are not compared across
    thread counts: the recorded margin is target vs the user's own face, not the gap between candidate
    targets, so even a wide margin does not make the greedy target choice stable under float noise."""
    from edgecloak.runtime.face_region import grown_box
    from edgecloak.runtime.image_io import load_image

    require_ray()
    runs = {name: two_workers(name) for name in ("inline", "processes", "ray")}
    outputs, records_by_run = {}, {}
    for name, extra in runs.items():
        dst = tmp_path / name
        code = main(["batch", str(library), str(dst), *FAST, *extra])
        assert code == 4  # not every photo finished: the corrupt one and the faceless one
        records = records_by_run[name] = _records(dst)
        assert set(records) == FACE_PHOTOS | {"family/broken.jpg", "sky.png"}
        assert records["family/broken.jpg"]["status"] == "error" and records["family/broken.jpg"]["error"]
        assert records["sky.png"]["status"] == "no-face"
        for rel in FACE_PHOTOS:
            record = records[rel]
            assert record["status"] == "done" and record["faces"]
            out = dst / record["output"]
            assert sha256_file(out) == record["output_sha256"]
            assert record["source_sha256"] == sha256_file(library / rel)
            # within eps of the source, outside faces hidden by --on-fail blur-face
            source, written = load_image(library / rel), load_image(out)
            changed = np.abs(written.astype(int) - source.astype(int)).max(axis=2)
            for face in record["faces"]:
                if face["action"] == "obscured":
                    x0, y0, x1, y1 = grown_box(face["box"], source.shape, margin=0.2)
                    changed[y0:y1, x0:x1] = 0
            assert changed.max() <= EPS and record["max_abs_change"] == changed.max()
            assert record["mask_max_abs_change"] <= EPS
            # each face that is reported cloaked passes the self-check, re-measured on the written file
            cloaked = [f for f in record["faces"] if f["action"] == "cloaked"]
            for face, margin in zip(cloaked, recheck_margins(checker, library / rel, out, cloaked)):
                assert face["margin"] > 0 and margin > 0 and margin == pytest.approx(face["margin"], abs=0.01)
        assert not (dst / "family/broken.png").exists() and not (dst / "sky.png").exists()
        summary = json.loads((dst / "summary.json").read_text())
        assert summary["processed"] == 6 and summary["statuses"] == {"done": 4, "error": 1, "no-face": 1}
        assert summary["photos_per_second"] > 0
        outputs[name] = _outputs(dst)
    assert set(outputs["inline"]) == set(outputs["processes"]) == set(outputs["ray"]) and len(outputs["inline"]) == 4
    for name in ("processes", "ray"):  # same statuses, same faces (boxes of the same detector on the same photo)
        for rel, record in records_by_run[name].items():
            reference = records_by_run["inline"][rel]
            assert record["status"] == reference["status"] and len(record["faces"]) == len(reference["faces"])
            for face, ref in zip(record["faces"], reference["faces"]):
                assert np.allclose(face["box"], ref["box"], atol=2)
    assert outputs["processes"] == outputs["ray"]  # same seed, same thread count: same bytes, whatever ran it
    for photo in library.rglob("photo*.jpg"):  # the originals are untouched
        assert photo.read_bytes()[:2] == b"\xff\xd8"


def _kill_once_something_is_done(cmd: list[str], manifest: Path) -> None:
    """Start ``cmd`` in its own process group and SIGKILL the whole group (workers, Ray processes)
    as soon as the manifest shows a finished photo."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if manifest.exists() and '"done"' in manifest.read_text(errors="replace"):
                break
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def two_workers(executor: str) -> list[str]:
    """The flags of a 2-worker run that do not depend on the machine's cores. Local processes: always 2
    (a pool takes any number; each gets max(1, cores // 2) threads). Ray: min(2, cores), since a local
    Ray instance refuses more actors than CPUs (the tests used to fail on one core); one actor still
    runs everything through Ray, with the same one thread as each process there."""
    from edgecloak.batch.executors import cores

    ray = ["--ray", "--workers", str(min(2, cores()))]
    return {"inline": [], "processes": ["--workers", "2"], "ray": ray}[executor]


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["inline", "processes", "ray"])
def test_a_killed_run_resumes_with_exactly_what_was_missing(library, tmp_path, executor):
    """kill -9 part-way, on every executor; the re-run skips exactly the photos finished before the
    kill (their outputs not rewritten), redoes the rest and clears the killed run's temporaries.

    Outputs renamed into place whose manifest line the kill lost (Ray actors even finish their photo
    after the driver is gone) are batch's own by the workers' journals: redone, not refused."""
    if executor == "ray":
        require_ray()
    flags = two_workers(executor)
    dst = tmp_path / "out"
    _kill_once_something_is_done([sys.executable, "-m", "edgecloak.cli.main", "batch", str(library), str(dst),
                                  *FAST, *flags], dst / "manifest.jsonl")
    before = {k: v for k, v in _records(dst).items() if v["status"] == "done"}
    assert 1 <= len(before) < 4, "the run should have been killed part-way"
    stamps = {rel: (dst / r["output"]).stat().st_mtime_ns for rel, r in before.items()}
    stale = dst / "family" / ".photo0.png.k1ll3d.tmp"  # what a kill during a write leaves behind
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a png")

    summary_json = tmp_path / "summary-resumed.json"
    assert main(["batch", str(library), str(dst), *FAST, *flags, "--json", str(summary_json)]) == 4
    summary = json.loads(summary_json.read_text())
    assert summary["skipped_already_done"] == len(before)
    assert summary["processed"] == 6 - len(before)  # the rest, the two bad files included
    assert not stale.exists() and not list(dst.rglob(".*.tmp"))
    records = _records(dst)
    assert {rel for rel, r in records.items() if r["status"] == "done"} == FACE_PHOTOS
    for rel in before:  # finished photos were not redone: same line, same file, not even rewritten
        assert records[rel] == before[rel]
        assert (dst / before[rel]["output"]).stat().st_mtime_ns == stamps[rel]
    for rel in FACE_PHOTOS:
        assert sha256_file(dst / records[rel]["output"]) == records[rel]["output_sha256"]
    assert not (dst / ".edgecloak-journal").exists()  # a clean run leaves no journal behind
    if executor != "inline":
        return  # what follows is the same code path on every executor

    # a changed source and a deleted output are redone; everything else is skipped
    changed = library / "family" / "photo0.jpg"
    original = changed.read_bytes()
    try:
        changed.write_bytes(original + b"\0")  # same picture, different bytes
        (dst / records["2024/summer/photo1.jpg"]["output"]).unlink()
        summary_json = tmp_path / "summary-changed.json"
        assert main(["batch", str(library), str(dst), *FAST, "--json", str(summary_json)]) == 4
        summary = json.loads(summary_json.read_text())
        assert summary["skipped_already_done"] == 2 and summary["processed"] == 4
    finally:
        changed.write_bytes(original)

    # other settings: every photo is redone (an output made under the old rules never stands)
    summary_json = tmp_path / "summary-other-settings.json"
    assert main(["batch", str(library), str(dst), *FAST, "--steps", "9", "--json", str(summary_json)]) == 4
    summary = json.loads(summary_json.read_text())
    assert summary["skipped_already_done"] == 0 and summary["processed"] == 6


@pytest.mark.slow
def test_an_output_whose_manifest_line_was_lost_is_still_batchs_own(library, tmp_path, monkeypatch):
    """The run stops after a worker renamed its output into place but before the driver wrote the
    photo's line (here Ctrl-C at that moment; a kill -9 leaves the same). The manifest does not
    record that output, but the worker's journal does: the next run redoes the photo and replaces it,
    where without the journal it would refuse it as a file batch did not write."""
    from edgecloak.batch.manifest import Manifest as RealManifest

    src = small_library(library, tmp_path / "src", "family/photo0.jpg")
    dst = tmp_path / "out"
    append = RealManifest.append

    def stop_before_the_line(self, record):
        if record["status"] == "done":
            raise KeyboardInterrupt
        append(self, record)

    monkeypatch.setattr(RealManifest, "append", stop_before_the_line)
    assert main(["batch", str(src), str(dst), *FAST]) == 130
    monkeypatch.setattr(RealManifest, "append", append)
    unrecorded = dst / "family" / "photo0.png"
    assert unrecorded.is_file() and "family/photo0.jpg" not in _records(dst)
    assert list((dst / ".edgecloak-journal").glob("*.jsonl"))

    assert main(["batch", str(src), str(dst), *FAST, "--steps", "9"]) == 0  # other bytes than the lost output's
    record = _records(dst)["family/photo0.jpg"]
    assert record["status"] == "done" and sha256_file(unrecorded) == record["output_sha256"]
    assert not (dst / ".edgecloak-journal").exists()


def test_a_worker_that_cannot_start_stops_the_run_with_one_line(library, tmp_path, capsys):
    """A bundle damaged on disk: its manifest reads fine in the driver, but each worker verifies the
    files' hashes on load and fails. The pool reports it once instead of restarting workers forever."""
    from edgecloak.recipe import bundle_for, resolve

    bundle = tmp_path / "damaged"
    shutil.copytree(bundle_for(resolve("edge")).root, bundle)
    with open(bundle / "targets.npz", "ab") as fh:  # one byte more: the recorded sha256 no longer matches
        fh.write(b"\0")
    code = main(["batch", str(library), str(tmp_path / "out"), "--bundle", str(bundle), "--workers", "2"])
    assert code == 1
    assert "worker process could not start" in one_error_line(capsys.readouterr().err)
    assert main(["batch", str(library), str(tmp_path / "out2"), "--eps", "100"]) == 2  # checked before any worker
    assert "eps" in one_error_line(capsys.readouterr().err) and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("quality", ["0", "101"])
@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_a_bad_jpeg_quality_is_refused_before_any_worker_starts(library, tmp_path, capsys, quality, fmt):
    """It used to be checked by each worker after cloaking: every photo became an error line."""
    dst = tmp_path / "out"
    assert main(["batch", str(library), str(dst), *FAST, "--format", fmt, "--jpeg-quality", quality]) == 2
    assert "--jpeg-quality must be a whole number in 1..100" in one_error_line(capsys.readouterr().err)
    assert not dst.exists()  # refused before anything started: no folder, no manifest, no error lines


# -- what is written -----------------------------------------------------------------------------
@pytest.mark.slow
def test_jpeg_outputs_record_the_margins_of_the_file_written(library, tmp_path, checker):
    """At JPEG quality 10 the encoder erodes much of the mask. Each face's recorded margin must be the
    one a recognizer measures on the written file (it used to be measured before encoding), and a
    face recorded as cloaked must pass on that file."""
    from edgecloak.runtime.image_io import load_image

    src = small_library(library, tmp_path / "src", "family/photo0.jpg", "2024/summer/photo1.jpg")
    dst = tmp_path / "out"
    code = main(["batch", str(src), str(dst), *FAST, "--on-fail", "keep", "--format", "jpg", "--jpeg-quality", "10"])
    assert code == 0
    records = _records(dst)
    assert {r["status"] for r in records.values()} == {"done"}
    for rel, record in records.items():
        out = dst / record["output"]
        assert out.suffix == ".jpg" and out.read_bytes()[:2] == b"\xff\xd8"
        assert hashlib.sha256(out.read_bytes()).hexdigest() == record["output_sha256"]
        source, written = load_image(src / rel), load_image(out)
        assert record["max_abs_change"] == int(np.abs(written.astype(int) - source.astype(int)).max())
        assert record["mask_max_abs_change"] <= EPS < record["max_abs_change"]  # JPEG 10's own error adds to the mask
        margins = recheck_margins(checker, src / rel, out, record["faces"])
        for face, margin in zip(record["faces"], margins):
            if margin is None:
                assert face["margin"] is None and face["action"] == "kept"
                continue
            assert margin == pytest.approx(face["margin"], abs=2e-3), (rel, face)
            assert face["action"] == ("cloaked" if margin > 0 else "kept")
    assert sum(m is not None for r in records.values() for m in [f["margin"] for f in r["faces"]]) >= 2


@pytest.mark.slow
def test_a_face_that_cannot_pass_is_recorded_dropped_and_not_written(library, tmp_path):
    """A photo cloaked by an earlier run fails under new settings: its old output (batch's own, as
    the manifest records) is removed, so DST mirrors the manifest."""
    src = small_library(library, tmp_path / "src", "family/photo0.jpg")
    dst = tmp_path / "out"
    assert main(["batch", str(src), str(dst), *FAST]) == 0  # an earlier run under other settings
    old = dst / _records(dst)["family/photo0.jpg"]["output"]
    assert old == dst / "family" / "photo0.png" and old.is_file()
    assert main(["batch", str(src), str(dst), *HOPELESS]) == ProtectionFailedError.exit_code
    record = _records(dst)["family/photo0.jpg"]
    assert record["status"] == "dropped" and "nothing was written" in record["error"]
    assert record["output"] is None and record["output_sha256"] is None
    assert not old.exists()  # DST mirrors the manifest: no output stands for a photo that did not finish
    assert sorted(p.name for p in dst.rglob("*") if p.is_file()) == ["manifest.jsonl", "summary.json"]
    summary = json.loads((dst / "summary.json").read_text())
    assert summary["statuses"] == {"dropped": 1} and summary["finished_in_library"] == 0


@pytest.mark.slow
def test_a_photo_that_fails_leaves_a_file_batch_did_not_write_alone(library, tmp_path):
    """At the failing photo's output: a user's file, and an earlier output the user edited since. Batch
    wrote neither (as they are now), so both stay, and the photo is an error saying why (both used to
    be deleted as "old outputs")."""
    src = small_library(library, tmp_path / "src", "family/photo0.jpg")
    users = tmp_path / "users"
    mine = users / "family" / "photo0.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own picture")
    assert main(["batch", str(src), str(users), *HOPELESS]) == ProtectionFailedError.exit_code
    assert mine.read_bytes() == b"the user's own picture"
    record = _records(users)["family/photo0.jpg"]
    assert record["status"] == "error" and record["output"] is None
    assert record["error"] == (f"{mine.resolve()} exists and was not written by edgecloak batch; "
                               "pass --overwrite to replace it")

    edited = tmp_path / "edited"
    assert main(["batch", str(src), str(edited), *FAST]) == 0
    output = edited / _records(edited)["family/photo0.jpg"]["output"]
    output.write_bytes(output.read_bytes() + b"an edit")  # no longer the bytes batch wrote
    touched = output.read_bytes()
    assert main(["batch", str(src), str(edited), *HOPELESS]) == ProtectionFailedError.exit_code
    assert output.read_bytes() == touched
    assert "not written by edgecloak batch" in _records(edited)["family/photo0.jpg"]["error"]


@pytest.mark.slow
def test_files_in_dst_that_batch_did_not_write_are_never_replaced_or_removed(library, tmp_path):
    """DST holds a user's family.png and .notes.tmp; SRC has a faceless family.jpg and a face photo
    whose output place holds a user's file too. Without --overwrite nothing of the user's is touched
    (family.png used to be deleted as a no-face photo's "old output", photo0.png replaced, and every
    .*.tmp in DST deleted); --overwrite replaces and removes them, and never a .tmp that is not the
    writer's own."""
    from PIL import Image

    src = small_library(library, tmp_path / "src", "family/photo0.jpg")
    Image.open(library / "sky.png").convert("RGB").save(src / "family.jpg", "JPEG")  # no face
    dst = tmp_path / "out"
    users = {"family.png": b"the user's family picture", ".notes.tmp": b"the user's notes",
             "family/photo0.png": b"the user's own picture", "family/.holiday.png.abc12345.tmp": b"not planned"}
    for name, data in users.items():
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_bytes(data)
    stale = dst / ".family.png.k1ll3d.tmp"  # the atomic writer's own temporary for a planned output
    stale.write_bytes(b"half a png")

    assert main(["batch", str(src), str(dst), *FAST]) == ProtectionFailedError.exit_code
    for name, data in users.items():
        assert (dst / name).read_bytes() == data, name
    assert not stale.exists()
    records = _records(dst)
    for rel, out in (("family.jpg", "family.png"), ("family/photo0.jpg", "family/photo0.png")):
        assert records[rel]["status"] == "error" and records[rel]["output"] is None
        assert records[rel]["error"] == (f"{(dst / out).resolve()} exists and was not written by edgecloak batch; "
                                         "pass --overwrite to replace it")
    assert json.loads((dst / "summary.json").read_text())["statuses"] == {"error": 2}

    assert main(["batch", str(src), str(dst), *FAST, "--overwrite"]) == ProtectionFailedError.exit_code
    records = _records(dst)
    assert records["family.jpg"]["status"] == "no-face" and not (dst / "family.png").exists()
    assert records["family/photo0.jpg"]["status"] == "done"
    assert sha256_file(dst / "family/photo0.png") == records["family/photo0.jpg"]["output_sha256"]
    for name in (".notes.tmp", "family/.holiday.png.abc12345.tmp"):  # not a planned output's temporary
        assert (dst / name).read_bytes() == users[name]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["link-to-dst", "dst-folder-links-to-src"])
def test_an_original_is_never_written_through_a_link(library, tmp_path, capsys, where):
    """A source that is a link to a file in DST, or a folder of DST that is a link into SRC: the output
    would land on the original (it did: the original's bytes changed). One line, exit 2, nothing done."""
    src, dst = tmp_path / "src", tmp_path / "out"
    (src / "family").mkdir(parents=True)
    dst.mkdir()
    if where == "link-to-dst":
        original = dst / "photo0.png"  # e.g. a photo kept in DST, linked into the library
        shutil.copy(library / "family/photo0.jpg", original)
        (src / "photo0.png").symlink_to(original)
    else:
        original = src / "family" / "photo0.png"  # a PNG original: its output is family/photo0.png
        shutil.copy(library / "family/photo0.jpg", original)
        (dst / "family").symlink_to(src / "family")
    before = original.read_bytes()
    assert main(["batch", str(src), str(dst), *FAST]) == UsageError.exit_code
    assert "originals are never modified" in one_error_line(capsys.readouterr().err)
    assert original.read_bytes() == before
    assert sorted(p.name for p in src.rglob("*")) == sorted(["family", "photo0.png"])
    assert not (dst / "manifest.jsonl").exists() and not (dst / "summary.json").exists()


@pytest.mark.slow
def test_the_json_copy_never_replaces_a_file_or_lands_in_src(library, tmp_path, capsys):
    """``--json PATH`` used to be written over whatever was there, an input photo included. Now it is
    checked before any work: a missing folder, a path in SRC, a file batch writes itself, or (without
    --overwrite) an existing file is one line, exit 2, and nothing is created."""
    src = small_library(library, tmp_path / "src", "sky.png")
    dst = tmp_path / "out"
    mine = tmp_path / "mine.json"
    mine.write_bytes(b"the user's file")
    photo = (src / "sky.png").read_bytes()
    cases = [(mine, "already exists; pass --overwrite"), (src / "sky.png", "inside the source folder"),
             (src / "new.json", "inside the source folder"), (tmp_path / "missing" / "x.json", "does not exist")]
    for path, message in cases:
        assert main(["batch", str(src), str(dst), *FAST, "--copy-faceless", "--json", str(path)]) == 2, path
        assert message in one_error_line(capsys.readouterr().err), path
        assert not dst.exists(), path  # refused before any work
    overwrite_src = ["--copy-faceless", "--overwrite", "--json", str(src / "sky.png")]  # --overwrite never reaches SRC
    assert main(["batch", str(src), str(dst), *FAST, *overwrite_src]) == 2
    assert "inside the source folder" in one_error_line(capsys.readouterr().err)
    assert mine.read_bytes() == b"the user's file" and (src / "sky.png").read_bytes() == photo
    assert not (src / "new.json").exists() and sorted(p.name for p in src.iterdir()) == ["sky.png"]

    assert main(["batch", str(src), str(dst), *FAST, "--copy-faceless", "--overwrite", "--json", str(mine)]) == 0
    assert json.loads(mine.read_text()) == json.loads((dst / "summary.json").read_text())
    manifest = (dst / "manifest.jsonl").read_bytes()
    for own in ("manifest.jsonl", "summary.json"):  # files batch writes itself
        assert main(["batch", str(src), str(dst), *FAST, "--copy-faceless", "--overwrite", "--json",
                     str(dst / own)]) == 2
        assert "batch writes that file itself" in one_error_line(capsys.readouterr().err)
    assert (dst / "manifest.jsonl").read_bytes() == manifest
    fresh = tmp_path / "fresh.json"
    assert main(["batch", str(src), str(dst), *FAST, "--copy-faceless", "--json", str(fresh)]) == 0
    assert json.loads(fresh.read_text())["skipped_already_done"] == 1


@pytest.mark.slow
def test_photos_written_with_an_unprotected_face_are_counted_and_reported(library, tmp_path, capsys):
    """``--on-fail keep`` writes a failing face as it is: the photo is ``done`` (the user chose it), but
    the summary counts it as unprotected and the final line says so (it used to look like a fully
    cloaked library, exit 0, nothing said)."""
    src = small_library(library, tmp_path / "src", "family/photo0.jpg")
    fails = ["--preset", "edge", "--retries", "0", "--min-face", "100000"]  # every face fails the check
    kept = tmp_path / "kept"
    assert main(["batch", str(src), str(kept), *fails, "--on-fail", "keep"]) == 0
    out = capsys.readouterr().out
    record = _records(kept)["family/photo0.jpg"]
    assert record["status"] == "done" and {f["action"] for f in record["faces"]} == {"kept"}
    summary = json.loads((kept / "summary.json").read_text())
    assert summary["unprotected"] == summary["unprotected_in_library"] == 1 and summary["finished_in_library"] == 1
    assert re.search(r"^\s+unprotected: 1$", out, re.M)
    assert out.rstrip().splitlines()[-1].startswith(
        f"1 of 1 photo(s) written to {kept}, 1 written with an unprotected face (--on-fail keep)")
    assert main(["batch", str(src), str(kept), *fails, "--on-fail", "keep"]) == 0  # a resumed run says it too
    summary = json.loads((kept / "summary.json").read_text())
    assert summary["unprotected"] == 0 and summary["unprotected_in_library"] == 1
    assert "1 written with an unprotected face" in capsys.readouterr().out.rstrip().splitlines()[-1]

    obscured = tmp_path / "obscured"  # the failing face under a mosaic: protected, not counted
    assert main(["batch", str(src), str(obscured), *fails, "--on-fail", "blur-face"]) == 0
    assert json.loads((obscured / "summary.json").read_text())["unprotected"] == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == \
        f"1 of 1 photo(s) written to {obscured}, 0 written with an unprotected face"


def _photo_with_private_metadata(source: Path, dest: Path) -> tuple[int, int]:
    """``source`` re-saved as a JPEG carrying EXIF (camera, date, GPS position), XMP, an ICC profile and
    a comment, stored rotated with an EXIF orientation that turns it upright. Returns the upright size."""
    from PIL import Image, ImageCms

    image = Image.open(source).convert("RGB")
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0132], exif[0x0112] = "SecretCam", "Model X", "2024:07:01 10:00:00", 6
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 22.0, 11.0), "E", (4.0, 53.0, 7.0)
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" photoshop:City="SecretTown"/>'
           b"</rdf:RDF></x:xmpmeta>")
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # stored turned 90 degrees counter-clockwise; orientation 6 tells viewers to turn it back
    image.transpose(Image.Transpose.ROTATE_90).save(dest, "JPEG", quality=95, exif=exif.tobytes(), xmp=xmp,
                                                    icc_profile=icc, comment=b"SecretComment")
    check = Image.open(dest)
    assert check.getexif()[0x0112] == 6 and check.getexif().get_ifd(0x8825)[1] == "N" and "xmp" in check.info
    return image.size


PRIVATE = (b"SecretCam", b"Model X", b"2024:07:01", b"SecretTown", b"SecretComment", b"http://ns.adobe.com")


def _containers(data: bytes) -> list[str]:
    """The chunk types of a PNG, or the marker segments of a JPEG up to its image data: where
    metadata would live (EXIF, XMP, ICC, text, comments)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        kinds, at = [], 8
        while at < len(data):
            length = int.from_bytes(data[at:at + 4], "big")
            kinds.append(data[at + 4:at + 8].decode("latin-1"))
            at += 12 + length
        return kinds
    assert data[:2] == b"\xff\xd8", "neither PNG nor JPEG"
    names = {0xE0: "APP0", 0xE1: "APP1", 0xE2: "APP2", 0xED: "APP13", 0xEE: "APP14", 0xFE: "COM"}
    kinds, at = [], 2
    while data[at] == 0xFF and data[at + 1] != 0xDA:  # up to the start of scan
        marker = data[at + 1]
        kinds.append(names.get(marker, f"{marker:02X}"))
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return kinds


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_metadata_is_stripped_end_to_end(library, tmp_path, fmt):
    """A camera JPEG with EXIF, GPS, XMP, ICC and a comment, and a faceless one (--copy-faceless):
    both outputs carry none of it, and the EXIF orientation is applied to the pixels."""
    from PIL import Image

    src = tmp_path / "src"
    upright = _photo_with_private_metadata(library / "family/photo0.jpg", src / "trip/face.jpg")
    _photo_with_private_metadata(library / "sky.png", src / "trip/sky.jpg")
    dst = tmp_path / "out"
    assert main(["batch", str(src), str(dst), *FAST, "--format", fmt, "--copy-faceless"]) == 0
    records = _records(dst)
    assert records["trip/face.jpg"]["status"] == "done" and records["trip/sky.jpg"]["status"] == "no-face-copied"
    for rel in ("trip/face.jpg", "trip/sky.jpg"):
        out = dst / records[rel]["output"]
        assert out.suffix == f".{fmt}"
        data = out.read_bytes()
        for marker in PRIVATE:
            assert marker not in data, (rel, marker)
        if fmt == "png":  # image header, pixels, end: no eXIf, iCCP, tEXt/iTXt/zTXt, tIME, pHYs
            assert set(_containers(data)) == {"IHDR", "IDAT", "IEND"}, _containers(data)
        else:  # JFIF header, tables, frame: no APP1 (EXIF, XMP), APP2 (ICC), APP13 (IPTC), COM
            assert not set(_containers(data)) & {"APP1", "APP2", "APP13", "COM"}, _containers(data)
        with Image.open(out) as image:
            assert not set(image.info) & {"exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "comment", "photoshop"}
            assert not dict(image.getexif()) and not image.getexif().get_ifd(0x8825)
            if rel == "trip/face.jpg":
                assert image.size == upright  # turned upright, not left for a viewer to turn


# -- a full disk ---------------------------------------------------------------------------------
def _userns_tmpfs_available() -> bool:
    """Can this user mount a tmpfs in a user + mount namespace (no root needed where it is allowed)?"""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', "/tmp"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def _run_on_a_full_disk(how: str, batch_args: list[str], disk: Path, free_bytes: int) -> subprocess.CompletedProcess:
    """``edgecloak batch ... DISK/out`` where DISK has only ``free_bytes`` left for new data. The
    callers load the edge bundle first (``checker``): the model cache must not need writing.

    ``tmpfs``: a real 64 KiB tmpfs mounted on DISK inside a user + mount namespace (unprivileged),
    filled up but for ``free_bytes``: writes fail with ENOSPC, as on a full disk.
    ``rlimit``: RLIMIT_FSIZE of ``free_bytes`` (SIGXFSZ ignored) on the process: writes past it fail
    with EFBIG. Works anywhere, but is a per-file limit, not a full filesystem.
    """
    import resource

    cmd = [sys.executable, "-m", "edgecloak.cli.main", "batch", *batch_args]
    disk.mkdir(parents=True, exist_ok=True)
    if how == "tmpfs":
        size = 64 * 1024
        script = ('mount -t tmpfs -o size=%d tmpfs "$0" || exit 97; head -c %d /dev/zero > "$0/fill" 2>/dev/null; '
                  'exec "$@"' % (size, size - free_bytes))
        return subprocess.run(["unshare", "-Urm", "sh", "-c", script, str(disk), *cmd], capture_output=True,
                              text=True, timeout=600)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (free_bytes, free_bytes))

    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=limit)


FULL_DISK = [pytest.param("tmpfs", id="tmpfs"), pytest.param("rlimit", id="rlimit-fsize")]


@pytest.mark.slow
@pytest.mark.parametrize("how", FULL_DISK)
def test_a_completely_full_disk_stops_the_run_with_one_output_error(library, tmp_path, how, checker):
    """Nothing can be written: the photo's output fails (recorded), then the manifest line fails, and
    that stops the run: exit 5, one line naming the manifest, no traceback, nothing left behind (it
    used to end in a traceback from closing the manifest)."""
    if how == "tmpfs" and not _userns_tmpfs_available():
        pytest.skip("user namespaces are not available here; the rlimit case covers the same code path")
    src = small_library(library, tmp_path / "src", "family/photo0.jpg", "sky.png")
    disk = tmp_path / "disk"
    done = _run_on_a_full_disk(how, [str(src), str(disk / "out"), *FAST], disk, free_bytes=0)
    assert done.returncode == OutputError.exit_code, done.stderr
    line = one_error_line(done.stderr)
    reason = "No space left on device" if how == "tmpfs" else "File too large"
    assert "manifest.jsonl: cannot write the manifest" in line and reason in line and "resume" in line
    assert "statuses" not in done.stdout  # stopped: no summary was printed as if the run had finished
    if how == "rlimit":  # the tmpfs went away with its namespace; here the folder can be inspected
        left = sorted(p.relative_to(disk).as_posix() for p in disk.rglob("*") if p.is_file())
        assert left == ["out/manifest.jsonl"] and (disk / "out/manifest.jsonl").stat().st_size == 0


@pytest.mark.slow
@pytest.mark.parametrize("how", FULL_DISK)
def test_a_summary_that_does_not_fit_is_one_output_error(library, tmp_path, how, checker):
    """Room for the manifest line but not for the summary: exit 5 and one line naming the summary."""
    if how == "tmpfs" and not _userns_tmpfs_available():
        pytest.skip("user namespaces are not available here; the rlimit case covers the same code path")
    src = small_library(library, tmp_path / "src", "sky.png")  # no face, nothing to write but the records
    disk = tmp_path / "disk"
    done = _run_on_a_full_disk(how, [str(src), str(disk / "out"), *FAST], disk,
                               free_bytes=4096 if how == "tmpfs" else 1000)  # one page / a line, not the summary
    assert done.returncode == OutputError.exit_code, done.stderr
    line = one_error_line(done.stderr)
    assert "summary.json: could not write" in line
    if how == "rlimit":
        out = disk / "out"
        assert _records(out)["sky.png"]["status"] == "no-face"  # the finished line stays
        assert not (out / "summary.json").exists() and not list(out.rglob(".*.tmp"))
