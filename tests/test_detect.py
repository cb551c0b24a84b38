"""MTCNN: ONNX conversion parity with the torch modules, and detection on real photos.

Real weights (facenet-pytorch's wheel) and real photos (the 5-identity set, insightface's t1.jpg),
fetched through the zoo; nothing mocked. The converter is tested on a fresh conversion
(``mtcnn_dir``); detection uses conftest's session ``detector`` (the zoo's cached conversion by
the same converter) and its ``celeb_faces`` (all 118 photos, detected once per session).
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


def test_detects_a_face_in_nearly_every_identity_photo(celeb_faces) -> None:
    assert len(celeb_faces) == 118
    missed = [p.path.name for p in celeb_faces if p.face is None]
    hits = len(celeb_faces) - len(missed)
    print(f"\nMTCNN: face found in {hits}/{len(celeb_faces)} photos; missed {missed}")
    assert hits >= 0.95 * len(celeb_faces)
    for photo in celeb_faces:
        if photo.face is not None:
            assert 0.7 < photo.face.score <= 1.0
            assert photo.face.width > 20 and photo.face.height > 20


def test_detection_time(detector: MTCNNDetector, celeb_faces) -> None:
    # Seconds per photo on the identity set (115-380 px photos) and on t1.jpg (1280 x 886, searched
    # at 1024 px). Reported, and bounded loosely so that a pathological slowdown fails.
    images = [p.image for p in celeb_faces[::4]]
    detector.detect(images[0])  # warm-up: the first ORT runs allocate
    start = time.perf_counter()
    for image in images:
        detector.detect(image)
    per_photo = (time.perf_counter() - start) / len(images)
    group = load_image(member_path(*_T1))
    start = time.perf_counter()
    detector.detect(group)
    per_group = time.perf_counter() - start
    print(f"\nMTCNN: {per_photo:.3f} s/photo over {len(images)} identity photos; t1.jpg {per_group:.2f} s")
    assert per_photo < 2.0 and per_group < 10.0


def test_group_photo_has_six_faces(t1_faces: list[DetectedFace]) -> None:
    # Six people, all found with high confidence. At facenet-pytorch's default thresholds MTCNN
    # also reports two weak false positives here (a fist at ~0.86, a blurred patch at ~0.82), as
    # facenet-pytorch itself does: every real face scores >= 0.95, every false one < 0.9.
    people = [f for f in t1_faces if f.score >= 0.9]
    assert len(people) == 6
    assert all(f.score >= 0.95 for f in people)
    assert all(f.width > 80 for f in people)
    assert len(t1_faces) - len(people) <= 2
    scores = [f.score for f in t1_faces]
    assert scores == sorted(scores, reverse=True)


def test_landmarks_are_in_anatomical_order(detector: MTCNNDetector, t1_faces: list[DetectedFace]) -> None:
    photos = [paths[0] for paths in identity_photos().values()]
    faces = [f for f in t1_faces if f.score >= 0.9] + [detector.detect(load_image(p))[0] for p in photos]
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
    people = [f for f in t1_faces if f.score >= 0.9]
    assert len([f for f in full if f.score >= 0.9]) == len(people) == 6
    for face in people:
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


def test_faces_cut_by_the_photo_edge_keep_their_landmarks(detector: MTCNNDetector) -> None:
    # Cut photos through the face (15% of its width off the left): the face's box now sticks out
    # of the photo, ONet sees a clipped, stretched crop, and its landmarks must be mapped through
    # what it saw. Measured: median error of the right eye / right mouth corner ~2% of the face
    # width (mapping through the whole box instead, as facenet-pytorch does, gives ~15-20%).
    errors = []
    for paths in identity_photos().values():
        for path in paths[:2]:
            photo = load_image(path)
            face = detector.detect(photo)[0]
            cut = int(face.box[0] + 0.15 * face.width)
            if cut <= 0:
                continue
            found = detector.detect(np.ascontiguousarray(photo[:, cut:]))
            assert found, f"{path.name}: a face cut at 15% should still be found"
            twin = min(found, key=lambda f: abs(f.box[2] + cut - face.box[2]))
            moved = np.linalg.norm(twin.landmarks + [cut, 0] - face.landmarks, axis=1)[[1, 4]]
            errors.append(moved.mean() / face.width)
    print(f"\nedge faces: right-side landmark error median {np.median(errors):.3f}, max {max(errors):.3f} x face width")
    assert len(errors) >= 8
    assert np.median(errors) < 0.05


def test_runtime_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import edgecloak.runtime.detect, edgecloak.runtime.image_io, edgecloak.runtime.align\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'onnxscript'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
