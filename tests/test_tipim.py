"""The TIP-IM reference: its pieces on hand-made cases, and white-box protection on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from edgecloak.export.reference.base import AttackConfig, IterativeAttack
from edgecloak.export.reference.mmd import mmd, paired_augment
from edgecloak.export.reference.targets import embed_face, embed_faces, geometries_of
from edgecloak.export.reference.tipim import TIPIM, TIPIMConfig
from edgecloak.export.reference.view import FaceView
from edgecloak.runtime.align import CropGeometry, alignment_matrix


class _Unused:
    """The budget helpers never call the recognizers; this stands in for one by id only."""

    id = "unused"


def _attack(eps=12.0, **kw):
    return IterativeAttack([_Unused()], AttackConfig(eps=eps, **kw))


def test_projection_keeps_linf_ball_and_pixel_range():
    x0 = torch.tensor([[[[0.0, 128.0, 255.0, 10.0]]]])
    far = x0 + torch.tensor([[[[-40.0, 40.0, 40.0, -3.0]]]])
    out = _attack(eps=12).project(far, x0)
    assert torch.equal(out, torch.tensor([[[[0.0, 140.0, 255.0, 7.0]]]]))


def test_finalise_rounds_and_holds_eps_exactly_for_fractional_eps():
    x0 = torch.full((1, 3, 4, 4), 100.0)
    x = x0 + 12.49  # rounds to 112, but floor(12.5) = 12 is the promise
    out = _attack(eps=12.5).finalise(x, x0)
    assert torch.equal(out, torch.full_like(x0, 112.0))
    assert (out - x0).abs().max() <= 12


def test_l2_projection_limits_the_norm_and_the_pixels():
    x0 = torch.full((1, 3, 8, 8), 128.0)
    x = x0 + torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 30
    out = _attack(eps=12, norm="l2", eps_l2=20.0).project(x, x0)
    assert (out - x0).flatten().norm() <= 20.0 + 1e-4
    assert (out - x0).abs().max() <= 12


def test_l2_step_moves_alpha_per_pixel_on_average():
    m = torch.randn(2, 3, 5, 5)
    x = torch.zeros(2, 3, 5, 5)
    moved = _attack(norm="l2", alpha=1.5).step(x, m)
    rms = moved.flatten(1).pow(2).mean(1).sqrt()
    assert torch.allclose(rms, torch.full((2,), 1.5), atol=1e-5)


def test_mmd_is_zero_for_identical_batches_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g)
    xa, ya = paired_augment(x, x, 6, g)
    assert mmd(xa, ya).item() == 0.0
    xb, yb = paired_augment(x, (x + 0.05).clamp(0, 1), 6, g)
    assert mmd(xb, yb).item() > 0.0


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        AttackConfig(eps=0)
    with pytest.raises(ValueError):
        AttackConfig(norm="l1")


def test_view_crop_matches_opencv_alignment(celeb_faces):
    """The differentiable view sees what cv2.warpAffine (the runtime's aligner) sees."""
    p = next(p for p in celeb_faces if p.face is not None)
    geometry = {"m": CropGeometry(112), "f": CropGeometry(160, 1.3)}
    view = FaceView.around(p.face.landmarks, p.image.shape[:2], geometry)
    x0, y0, x1, y1 = view.box
    region = torch.from_numpy(np.ascontiguousarray(p.image[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    crops = view.crops(region)
    for name, g in geometry.items():
        m = alignment_matrix(p.face.landmarks, g)
        if np.sqrt(abs(np.linalg.det(m[:, :2]))) < 0.5:
            continue  # the view pools large faces first; cv2 does not: not comparable
        ref = cv2.warpAffine(p.image, m, (g.size, g.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        ours = crops[name][0].permute(1, 2, 0).numpy()
        inner = slice(4, g.size - 4)
        assert np.abs(ours[inner, inner] - ref[inner, inner].astype(np.float32)).mean() < 1.0


def test_batched_gradients_equal_separate_backward_passes(recognizer, celeb_faces):
    """One backward over K copies == the paper code's K separate backward passes."""
    rec = recognizer("mobileface")
    p = next(p for p in celeb_faces if p.face is not None)
    view = FaceView.around(p.face.landmarks, p.image.shape[:2], geometries_of([rec]))
    x0, y0, x1, y1 = view.box
    x = torch.from_numpy(np.ascontiguousarray(p.image[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    attack = TIPIM([rec], TIPIMConfig())
    cot = [torch.randn(3, rec.spec.embedding_dim, generator=torch.Generator().manual_seed(0))]
    batched = attack.identity_gradients(x, view, cot)
    for k in range(3):
        xv = x.clone().requires_grad_(True)
        e = rec(view.crops(xv.round() + (xv - xv.detach()))["mobileface"])
        (g,) = torch.autograd.grad((e * cot[0][k]).sum(), xv)
        assert torch.allclose(batched[k], g[0], rtol=1e-4, atol=1e-6 * g.abs().max().item())


@pytest.mark.slow
def test_whitebox_protection_on_real_photos(recognizer, detector, celeb_faces):
    """Paper defaults, white-box mobileface: >= 9 of 10 probes no longer rank their true identity first.

    Probes: the first 2 photos of each of the 5 identities. Gallery: every other photo of the set.
    Each protected photo is re-read like a downstream system would: detect, align, embed.
    """
    from edgecloak.cloaker import Cloaker
    from edgecloak.export.reference.targets import default_target_bank

    rec = recognizer("mobileface")
    faces = [p for p in celeb_faces if p.face is not None]
    gallery_emb = embed_faces([(p.image, p.face.landmarks) for p in faces], [rec])["mobileface"]
    labels = np.array([p.identity for p in faces])
    cloaker = Cloaker([rec], detector, default_target_bank([rec], detector), TIPIMConfig())
    assert cloaker.targets.size >= 10

    probes = []
    for identity in sorted(set(labels)):
        probes += [i for i, p in enumerate(faces) if p.identity == identity][:2]
    moved = clean_correct = 0
    for i in probes:
        p = faces[i]
        result = cloaker.protect(p.image)
        diff = np.abs(result.image.astype(np.int16) - p.image.astype(np.int16))
        assert diff.max() <= 12  # the eps bound, exactly, on every pixel of the output
        found = detector.detect(result.image)
        face = max(found, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
        probe = embed_face(result.image, face.landmarks, [rec])["mobileface"]
        others = [j for j in range(len(faces)) if j != i]
        top = others[int((gallery_emb[others] @ probe[0]).argmax())]
        clean_top = others[int((gallery_emb[others] @ gallery_emb[i]).argmax())]
        moved += labels[top] != p.identity
        clean_correct += labels[clean_top] == p.identity
        print(f"{p.path.name}: true {p.identity}, rank-1 clean {labels[clean_top]}, protected {labels[top]}")
    print(f"protected: {moved}/10 moved off their identity; clean rank-1 correct {clean_correct}/10")
    assert moved >= 9
