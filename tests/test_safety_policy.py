"""Privacy fails closed: the self-check, retries, small faces and the --on-fail policies, on a real photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgecloak.errors import ProtectionFailedError, UsageError
from edgecloak.export.zoo.photos import sample_photo
from edgecloak.runtime.face_region import grown_box
from edgecloak.runtime.image_io import load_image

NEVER = 5.0  # a margin no face reaches (cosines differ by at most 2)


@pytest.fixture(scope="module")
def photo():
    return load_image(sample_photo())


@pytest.fixture(scope="module")
def cloak(photo):
    """cloak(policy, **settings) -> a Cloaker on the edge bundle (mobileface, ONNX Runtime)."""
    from edgecloak.cloaker import Cloaker, SafetyPolicy
    from edgecloak.export.bundle import default_bundle

    bundle = default_bundle(["mobileface"], 10)

    def make(steps: int = 2, **policy):
        return Cloaker.load(bundle=bundle, backend="onnxruntime", steps=steps, policy=SafetyPolicy(**policy))

    return make


def test_policy_rejects_unknown_choices():
    from edgecloak.cloaker import SafetyPolicy

    with pytest.raises(UsageError, match="on-fail"):
        SafetyPolicy(on_fail="shrug")
    with pytest.raises(UsageError):
        SafetyPolicy(retries=-1)


@pytest.mark.slow
def test_a_face_that_fails_the_check_drops_the_photo_after_its_retries(cloak, photo):
    cloaker = cloak(min_margin=NEVER, retries=2)
    # 2 steps, then retries of max(2 * last, 2) = 4 and 8 steps: 14 in all, and still nothing is emitted
    with pytest.raises(ProtectionFailedError, match=r"1 of 1 face.*not protected.*after 14 steps.*nothing was written"):
        cloaker.protect(photo)


@pytest.mark.slow
def test_retries_double_the_steps_and_keep_reports_the_face_unprotected(cloak, photo):
    result = cloak(min_margin=NEVER, retries=2, on_fail="keep").protect(photo)
    face = result.faces[0]
    assert face.steps == 2 + 4 + 8 and face.action == "kept" and not result.protected
    assert "margin" in face.reason and face.margin is not None
    assert 0 < result.max_abs_change <= 12  # what was cloaked stays in the budget


@pytest.mark.slow
def test_blur_face_hides_a_failing_face_and_nothing_else(cloak, photo):
    cloaker = cloak(min_margin=NEVER, retries=0, on_fail="blur-face")
    result = cloaker.protect(photo)
    face = result.faces[0]
    assert face.action == "obscured" and result.protected
    x0, y0, x1, y1 = grown_box(face.box, photo.shape, margin=0.2)
    inside = np.abs(result.image[y0:y1, x0:x1].astype(int) - photo[y0:y1, x0:x1]).mean()
    assert inside > 15  # the face is gone, not lightly perturbed
    outside = np.ones(photo.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.abs(result.image[outside].astype(int) - photo[outside]).max() <= 12
    # a recognizer can no longer find a face where it was, or no longer the same face
    found = [f for f in cloaker.detector.detect(result.image) if f.box[0] < face.box[2] and f.box[2] > face.box[0]]
    assert not found or max(f.score for f in found) < 0.99


@pytest.mark.slow
def test_faces_too_small_are_not_cloaked_and_follow_the_policy(cloak, photo):
    cloaker = cloak(min_face=10_000)
    with pytest.raises(ProtectionFailedError, match="too small"):
        cloaker.protect(photo)
    kept = cloak(min_face=10_000, on_fail="keep").protect(photo)
    assert kept.faces[0].steps == 0 and kept.faces[0].target is None
    assert np.array_equal(kept.image, photo)


@pytest.mark.slow
def test_a_passing_face_is_cloaked_and_a_shifted_frame_warm_starts(cloak, photo):
    cloaker = cloak(steps=16, retries=3)
    first = cloaker.protect(photo)
    face = first.faces[0]
    assert face.action == "cloaked" and face.margin > 0 and first.protected
    h, w = photo.shape[:2]
    moved = cv2.warpAffine(photo, np.float32([[1, 0, 3], [0, 1, 2]]), (w, h), borderMode=cv2.BORDER_REFLECT)
    second = cloak(steps=16, retries=0, on_fail="keep").protect(moved, warm=first.warm_start(steps=4))
    again = second.faces[0]
    assert again.warm_started and again.steps == 4 and again.target == face.target


@pytest.mark.slow
def test_one_cloaker_serves_several_threads(photo):
    """The lock serialises calls: two threads at once both get a complete, in-budget result."""
    from concurrent.futures import ThreadPoolExecutor

    from edgecloak.cloaker import Cloaker, SafetyPolicy

    cloaker = Cloaker.load(preset="edge", steps=2, policy=SafetyPolicy(retries=0, on_fail="keep"))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(cloaker.protect, [photo, photo.copy()]))
    for result in results:
        assert len(result.faces) == 1 and 0 < result.max_abs_change <= 12
    assert np.array_equal(results[0].image, results[1].image)  # same seed, same photo: same mask


@pytest.mark.slow
def test_protect_on_fail_drop_exits_4_and_writes_nothing(tmp_path, capsys):
    """The CLI end of fail-closed: a face that cannot pass (a 1/255 budget, one step, no retry) under
    --on-fail drop gives exit 4, one error line, and an output folder with nothing in it -- no photo,
    no temporary file."""
    from edgecloak.cli.main import main

    out = tmp_path / "out"
    code = main(["protect", str(sample_photo()), "-o", str(out), "--preset", "fast", "--backend", "onnxruntime",
                 "--steps", "1", "--eps", "1", "--retries", "0", "--on-fail", "drop"])
    assert code == ProtectionFailedError.exit_code == 4
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert "Traceback" not in captured.err
    assert len(errors) == 1 and errors[0].startswith("edgecloak: error:") and "nothing was written" in errors[0]
    assert out.is_dir() and sorted(out.iterdir()) == []  # nothing at all, hidden temporaries included
