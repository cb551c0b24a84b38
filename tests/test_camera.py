"""`edgecloak run`: a video file built from a real photo stands in for the camera (CI has none).

A live camera, a stream URL and the preview window need hardware or a display; the same code
paths run here on the video file (``FrameSource`` treats all three alike), and losing a live
camera is the one branch only a device exercises (``--camera 0`` on a machine with a camera).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from edgecloak.export.zoo.photos import sample_photo
from edgecloak.runtime.image_io import load_image


def make_clip(path, frames: int) -> list[np.ndarray]:
    """The sample photo drifting right and down (2, 1 px per frame), as an MJPG video; its decoded frames."""
    img = load_image(sample_photo())
    h, w = img.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for i in range(frames):
        shift = np.float32([[1, 0, 2 * i], [0, 1, i]])
        writer.write(cv2.cvtColor(cv2.warpAffine(img, shift, (w, h), borderMode=cv2.BORDER_REFLECT), cv2.COLOR_RGB2BGR))
    writer.release()
    capture, decoded = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return decoded
        decoded.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    frames = make_clip(path, 8)
    assert len(frames) == 8
    return path, frames


def run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecloak.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout)


def summary_of(done: subprocess.CompletedProcess) -> dict:
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))


def sidecars(outbox) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(outbox.glob("frame-*.json"))]


@pytest.mark.slow
def test_continuous_video_cloaks_every_emitted_frame_and_warm_starts(clip, tmp_path):
    path, frames = clip
    outbox = tmp_path / "outbox"
    done = run_cli("run", "--camera", str(path), "--outbox", str(outbox), "--mode", "continuous",
                   "--max-frames", "5", "--retries", "2", "--warm-steps", "8")
    assert done.returncode == 0, done.stderr
    summary = summary_of(done)
    assert summary["stopped"] == "max frames" and summary["read"] == 5
    assert summary["emitted"] + summary["dropped"] + summary["no_face"] == 5 and summary["emitted"] >= 2
    assert summary["fps"] > 0 and "frames/s" in done.stdout
    images = sorted(outbox.glob("frame-*.png"))
    assert len(images) == summary["emitted"]
    assert not list(outbox.glob(".*"))  # no temporary files left behind
    cars = sidecars(outbox)
    for image, car in zip(images, cars):
        assert car["image"] == image.name and car["protected"]
        # fails closed: every emitted face passed the self-check, within eps of its source frame
        assert all(f["action"] == "cloaked" and f["margin"] > 0 for f in car["faces"])
        source = frames[car["frame"] - 1]
        assert np.abs(load_image(image).astype(int) - source.astype(int)).max() <= 12
    warm = [f for car in cars for f in car["faces"] if f["warm_started"]]
    assert warm and summary["warm_started_faces"] == len(warm)
    # a continuing face runs the warm count (8), then retries of max(2 * last, 16): 8, 24 or 56 steps,
    # and keeps the first frame's target
    assert {f["steps"] for f in warm} <= {8, 24, 56}
    assert len({f["target"] for f in cars[0]["faces"] + warm}) == 1


@pytest.mark.slow
def test_snapshots_every_n_frames_and_slow_uploads_never_block_capture(clip, tmp_path):
    path, _ = clip
    outbox, dest, gate = tmp_path / "outbox", tmp_path / "uploaded", tmp_path / "gate"
    dest.mkdir()
    # an upload that cannot finish until the gate opens: capture must go on regardless
    upload = f"sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done; cp \"$1\" {dest}/' upload {{}}"
    done = run_cli("run", "--camera", str(path), "--outbox", str(outbox), "--every", "2", "--steps", "3",
                   "--on-fail", "keep", "--upload-cmd", upload, "--queue-size", "1", "--drain-timeout", "0")
    assert done.returncode == 0, done.stderr
    summary = summary_of(done)
    assert summary["stopped"] == "end of video" and summary["read"] == 8 and summary["emitted"] == 4
    assert [c["frame"] for c in sidecars(outbox)] == [2, 4, 6, 8]
    assert summary["uploads"]["uploaded"] == 0 and summary["uploads"]["pending"] == 4  # left resumable
    assert not list(dest.iterdir()) and not list(outbox.glob("*.uploaded"))
    gate.touch()  # the network is back: the next run uploads what was left
    done = run_cli("run", "--outbox", str(outbox), "--upload-cmd", upload, "--upload-pending")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in outbox.glob("frame-*.png"))
    assert len(list(outbox.glob("*.uploaded"))) == 4


@pytest.mark.slow
def test_sigterm_stops_after_the_frame_in_hand(tmp_path):
    path = tmp_path / "long.avi"
    make_clip(path, 40)
    outbox = tmp_path / "outbox"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgecloak.cli.main", "run", "--camera", str(path), "--outbox", str(outbox),
         "--mode", "continuous", "--steps", "3", "--on-fail", "keep"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list(outbox.glob("frame-*.png")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    summary = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert summary["stopped"] == "signal SIGTERM" and summary["read"] < 40
    images = sorted(outbox.glob("frame-*.png"))
    assert len(images) == summary["emitted"] >= 1
    assert all(p.with_suffix(".json").exists() for p in images)  # nothing half-written
    assert not list(outbox.glob(".*"))
    assert list(outbox.glob("session-*.json"))


def test_a_camera_that_is_not_there_is_one_line_and_nonzero(tmp_path):
    for source in ("7", str(tmp_path / "missing.mp4")):
        done = run_cli("run", "--camera", source, "--outbox", str(tmp_path / "o"), "--preset", "edge")
        assert done.returncode == 8, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("edgecloak: error:")]
        assert len(errors) == 1 and source in errors[0]


def test_outbox_names_never_repeat_and_stale_temp_files_go(tmp_path):
    from edgecloak.camera.outbox import Outbox

    img = np.zeros((8, 8, 3), np.uint8)
    first = Outbox(tmp_path).write(img, {"faces": []})
    (tmp_path / ".frame-x.png.abc.tmp").write_bytes(b"half")
    box = Outbox(tmp_path)  # a restart
    second = box.write(img, {"faces": []})
    assert first != second and sorted(box.frames()) == [first, second]
    assert not list(tmp_path.glob(".*.tmp"))
    assert json.loads(second.with_suffix(".json").read_text())["image"] == second.name
    box.mark(first, True, {"returncode": 0})
    assert box.pending() == [second]
    assert os.stat(second).st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_a_trigger_file_takes_one_snapshot(clip, tmp_path):
    path, _ = clip
    trigger = tmp_path / "snap"
    trigger.touch()
    outbox = tmp_path / "outbox"
    done = run_cli("run", "--camera", str(path), "--outbox", str(outbox), "--trigger-file", str(trigger),
                   "--steps", "3", "--on-fail", "keep")
    assert done.returncode == 0, done.stderr
    assert [c["frame"] for c in sidecars(outbox)] == [1] and not trigger.exists()
