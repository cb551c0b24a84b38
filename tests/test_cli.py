"""The CLI end to end on real photos, and its failure modes (fail closed, nothing partial)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgecloak.export.zoo.photos import sample_photo
from edgecloak.runtime.image_io import load_image


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecloak.cli.main", *args], capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_protect_writes_a_protected_lossless_photo_and_a_summary(tmp_path):
    photo = tmp_path / "in" / "hopper.jpg"
    photo.parent.mkdir()
    shutil.copy(sample_photo(), photo)
    original_bytes = photo.read_bytes()
    out = tmp_path / "out"
    done = run_cli("protect", str(photo), "-o", str(out), "--steps", "5", "--surrogates", "mobileface",
                   "--json", str(tmp_path / "summary.json"))
    assert done.returncode == 0, done.stderr
    assert photo.read_bytes() == original_bytes  # the original is untouched
    written = out / "hopper.png"
    assert sorted(p.name for p in out.iterdir()) == ["hopper.png"]  # no temp files left behind
    before, after = load_image(photo), load_image(written)
    diff = np.abs(after.astype(int) - before.astype(int))
    assert 0 < diff.max() <= 12
    summary = json.loads((tmp_path / "summary.json").read_text())
    face = summary[0]["faces"][0]
    assert face["target"] and "mobileface" in face["similarity"]
    assert face["similarity"]["mobileface"]["original_after"] < 0.999
    assert "face 0" in done.stdout and "sim(target)" in done.stdout


@pytest.mark.parametrize(
    "name, payload, message",
    [
        ("empty.jpg", b"", "empty"),
        ("notes.png", b"this is not an image at all", "not an image"),
        ("cut.jpg", None, "truncated"),
    ],
)
def test_bad_input_gives_one_line_error_and_no_output(tmp_path, name, payload, message):
    bad = tmp_path / name
    if payload is None:
        bad.write_bytes(sample_photo().read_bytes()[:5000])
    else:
        bad.write_bytes(payload)
    out = tmp_path / "out"
    done = run_cli("protect", str(bad), "-o", str(out), "--steps", "2", "--surrogates", "mobileface")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("edgecloak: error:")]
    assert len(errors) == 1 and name in errors[0] and message in errors[0].lower()
    assert not any(out.iterdir())


def test_photo_without_a_face_is_refused(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    Image.fromarray(np.dstack([ramp, ramp[:, ::-1], ramp])).save(tmp_path / "wall.png")
    out = tmp_path / "out"
    done = run_cli("protect", str(tmp_path / "wall.png"), "-o", str(out), "--steps", "2", "--surrogates", "mobileface")
    assert done.returncode == 3
    assert "no face found" in done.stderr
    assert not any(out.iterdir())


def test_missing_photo_argument_is_a_usage_error(tmp_path):
    done = run_cli("protect", "-o", str(tmp_path / "o"))
    assert done.returncode == 2 and "at least one photo" in done.stderr


def test_models_list_reports_every_model():
    done = run_cli("models", "list", "--json")
    assert done.returncode == 0
    ids = {row["id"] for row in json.loads(done.stdout)}
    assert {"mobileface", "faceres", "facenet-casia", "faceres-deep", "facenet-keras", "mtcnn"} <= ids
