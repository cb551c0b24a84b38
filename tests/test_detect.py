"""MTCNN: ONNX conversion parity with the torch modules, and detection on real photos.

Real weights (facenet-pytorch's wheel) and real photos (the 5-identity set, insightface's t1.jpg),
fetched through the zoo; nothing mocked.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgecloak.errors import ModelError
from edgecloak.export.convert.mtcnn import CONVERTER_VERSION, OPSET, convert, load_net
from edgecloak.export.zoo.fetch import member_path
from edgecloak.export.zoo.photos import identity_photos
from edgecloak.runtime.detect import DetectedFace, MTCNNDetector
from edgecloak.runtime.image_io import load_image

_WEIGHTS = "facenet_pytorch/data/{}.pt"
_T1 = ("insightface", "insightface/data/images/t1.jpg")


def weights(name: str) -> Path:
    return member_path("facenet-pytorch", _WEIGHTS.format(name))


@pytest.fixture(scope="session")
def mtcnn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three graphs, converted once per test session (shared through the session's basetemp)."""
    out = tmp_path_factory.getbasetemp() / f"mtcnn-onnx-{CONVERTER_VERSION}"
    if not (out / "onet.onnx").exists():  # convert() writes onet last, each file atomically
        convert(weights("pnet"), weights("rnet"), weights("onet"), out)
    return out


@pytest.fixture(scope="module")
def detector(mtcnn_dir: Path) -> MTCNNDetector:
    return MTCNNDetector.from_dir(mtcnn_dir)


@pytest.fixture(scope="module")
def t1_faces(detector: MTCNNDetector) -> list[DetectedFace]:
    return detector.detect(load_image(member_path(*_T1)))


# -- conversion ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shapes",
    [
        ("pnet", [(1, 3, 12, 12), (2, 3, 97, 131), (1, 3, 240, 180)]),  # dynamic batch, H and W
        ("rnet", [(1, 3, 24, 24), (37, 3, 24, 24)]),
        ("onet", [(1, 3, 48, 48), (9, 3, 48, 48)]),
    ],
)
def test_onnx_matches_torch(mtcnn_dir: Path, name: str, shapes: list[tuple[int, ...]]) -> None:
    net = load_net(name, weights(name))
    session = ort.InferenceSession(str(mtcnn_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for shape in shapes:
        # Inputs in the range the detector feeds: (uint8 - 127.5) / 128.
        x = ((rng.integers(0, 256, shape).astype(np.float32)) - 127.5) / 128
        ours = session.run(None, {"input": x})
        with torch.no_grad():
            ref = net(torch.from_numpy(x))
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref):
            assert a.shape == tuple(b.shape)
            worst = max(worst, float(np.abs(a - b.numpy()).max()))
    print(f"\n{name}: max |onnx - torch| = {worst:.2e}")
    assert worst < 1e-5


def test_graphs_are_self_contained_opset17(mtcnn_dir: Path) -> None:
    for name in ("pnet", "rnet", "onet"):
        model = onnx.load(str(mtcnn_dir / f"{name}.onnx"), load_external_data=False)
        assert {o.domain: o.version for o in model.opset_import}.get("", None) == OPSET
        assert len(model.graph.initializer) >= 13  # every weight is inside the graph
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        batch = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param, f"{name}: batch axis should be dynamic"


def test_wrong_weights_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        load_net("rnet", weights("pnet"))
    with pytest.raises(ModelError, match="missing"):
        MTCNNDetector.from_dir(tmp_path)


# -- detection on real photos --------------------------------------------------------------------


def test_detects_a_face_in_nearly_every_identity_photo(detector: MTCNNDetector) -> None:
    photos = [p for paths in identity_photos().values() for p in paths]
    assert len(photos) == 118
    images = [load_image(p) for p in photos]
    detector.detect(images[0])  # warm-up: first ORT runs allocate
    start = time.perf_counter()
    found = [detector.detect(img) for img in images]
    seconds = (time.perf_counter() - start) / len(images)
    hits = sum(bool(f) for f in found)
    missed = [p.name for p, f in zip(photos, found) if not f]
    print(f"\nMTCNN: face found in {hits}/{len(photos)} photos, {seconds:.3f} s/photo; missed {missed}")
    assert hits >= 0.95 * len(photos)
    for faces in found:
        if faces:
            best = faces[0]
            assert 0.7 < best.score <= 1.0
            assert best.width > 20 and best.height > 20


def test_group_photo_has_six_faces(t1_faces: list[DetectedFace]) -> None:
    assert len(t1_faces) == 6
    scores = [f.score for f in t1_faces]
    assert scores == sorted(scores, reverse=True)
    assert min(scores) > 0.9


def test_landmarks_are_in_anatomical_order(detector: MTCNNDetector, t1_faces: list[DetectedFace]) -> None:
    photos = [paths[0] for paths in identity_photos().values()]
    faces = list(t1_faces) + [detector.detect(load_image(p))[0] for p in photos]
    for face in faces:
        (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = face.landmarks
        assert lex < rex and lmx < rmx  # "left" as seen in the image
        assert max(ley, rey) < min(lmy, rmy)  # eyes above the mouth
        assert min(ley, rey) < ny < max(lmy, rmy)  # nose between them
        x1, y1, x2, y2 = face.box
        assert x1 - 2 <= nx <= x2 + 2 and y1 - 2 <= ny <= y2 + 2


def test_downscaled_search_matches_full_resolution(mtcnn_dir: Path, t1_faces: list[DetectedFace]) -> None:
    # t1.jpg is 1280 px wide: the default detector searches an 1024 px copy; ONet runs at full size.
    full = MTCNNDetector.from_dir(mtcnn_dir, max_side=None).detect(load_image(member_path(*_T1)))
    assert len(full) == len(t1_faces) == 6
    for face in t1_faces:
        twin = min(full, key=lambda f: np.abs(f.box - face.box).sum())
        assert np.abs(twin.landmarks - face.landmarks).max() < 0.1 * face.width


def test_detection_is_deterministic(detector: MTCNNDetector, t1_faces: list[DetectedFace]) -> None:
    again = detector.detect(load_image(member_path(*_T1)))
    assert [f.score for f in again] == [f.score for f in t1_faces]
    for a, b in zip(again, t1_faces):
        np.testing.assert_array_equal(a.box, b.box)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)


def test_no_face_in_blank_or_tiny_images(detector: MTCNNDetector) -> None:
    assert detector.detect(np.full((300, 400, 3), 128, np.uint8)) == []
    assert detector.detect(np.zeros((8, 8, 3), np.uint8)) == []
    with pytest.raises(ValueError):
        detector.detect(np.zeros((100, 100), np.uint8))


def test_face_at_the_photo_edge_keeps_its_landmarks(detector: MTCNNDetector) -> None:
    # Cut a photo through the face: the box sticks out of the photo, the crop is zero-padded.
    photo = load_image(identity_photos()["ben_afflek"][0])
    face = detector.detect(photo)[0]
    cut = int(face.box[0] + 0.25 * face.width)
    edge_faces = detector.detect(np.ascontiguousarray(photo[:, cut:]))
    assert edge_faces, "a face cut at its left quarter should still be found"
    right_eye = edge_faces[0].landmarks[1] + [cut, 0]
    assert np.linalg.norm(right_eye - face.landmarks[1]) < 0.1 * face.width


def test_runtime_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import edgecloak.runtime.detect, edgecloak.runtime.image_io, edgecloak.runtime.align\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'onnxscript'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
