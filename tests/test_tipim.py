"""The torch oracle's pieces on hand-made cases, and white-box protection on real photos through the
SDK (the runtime: what users get)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgecloak.export.reference.oracle import TIPIM, mmd, paired_augment
from edgecloak.export.reference.targets import embed_face, embed_faces, geometries_of
from edgecloak.export.reference.view import FaceView
from edgecloak.runtime.align import CropGeometry, alignment_matrix
from edgecloak.runtime.config import TIPIMConfig
from edgecloak.runtime.targets import TargetBank


class _Unused:
    """The budget helpers never call the recognizers; this stands in for one by id only."""

    id = "unused"


def _attack(eps=12.0, **kw):
    return TIPIM([_Unused()], TIPIMConfig(eps=eps, **kw))


@pytest.fixture(scope="module")
def mobileface_k10() -> Path:
    """The cached mobileface bundle (K 10, the paper's default settings), exported on first use."""
    from edgecloak.export.bundle import default_bundle

    return default_bundle(["mobileface"], 10)


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
    rng = np.random.default_rng(0)
    xa, ya = paired_augment(x, x, 6, rng)
    assert mmd(xa, ya).item() == 0.0
    xb, yb = paired_augment(x, (x + 0.05).clamp(0, 1), 6, rng)
    assert mmd(xb, yb).item() > 0.0


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        TIPIMConfig(eps=0)
    with pytest.raises(ValueError):
        TIPIMConfig(norm="l1")
    with pytest.raises(ValueError, match="at least one surrogate"):
        TIPIM([], TIPIMConfig())


def test_target_banks_embedded_by_torch_recognizers_are_numpy(recognizer, detector):
    """The zoo's torch recognizers embed the default targets (bundle export); the bank is numpy."""
    from edgecloak.export.reference.targets import default_target_bank

    bank = default_target_bank([recognizer("mobileface")], detector)
    emb = bank.embeddings["mobileface"]
    assert isinstance(emb, np.ndarray) and emb.dtype == np.float32 and emb.shape == (10, 256)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


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
        # the worst element used 0.24 of this tolerance (oneDNN at SSE4.1; 0.12 by default) in the
        # variants of scripts/measure_drift.py (group tipim)
        assert torch.allclose(batched[k], g[0], rtol=1e-4, atol=1e-6 * g.abs().max().item())


@pytest.mark.parametrize("settings", [dict(norm="l2", eps_l2=400.0), dict(gamma=0.5), dict(diversity=None, mu=0.5)])
def test_variants_run_on_a_real_face_and_keep_the_budget(mobileface_k10, settings):
    """The L2 variant, the MMD term and the no-diversity path all run end to end through the SDK on
    the runtime, and keep eps."""
    from edgecloak.cloaker import Cloaker, SafetyPolicy
    from edgecloak.export.zoo.photos import sample_photo
    from edgecloak.runtime.image_io import load_image

    image = load_image(sample_photo())
    cloaker = Cloaker.load(bundle=mobileface_k10, backend="onnxruntime", num_targets=3,
                           policy=SafetyPolicy(on_fail="keep"),  # 4 steps: about the variants running, not the check
                           steps=4, eps=8, **settings)
    result = cloaker.protect(image)
    change = np.abs(result.image.astype(int) - image.astype(int))
    assert 0 < change.max() <= 8
    assert result.faces[0].target in cloaker.targets.identities
    assert result.faces[0].similarity["mobileface"]["original_after"] < 1.0


def protect_probes_whitebox(recognizer, detector, celeb_faces, bundle: Path, seed: int = 0) -> tuple[int, int]:
    """(probes moved off their identity, probes whose rank-1 answer is a target), of 10, for the test
    below; ``seed`` is the diversity seed (scripts/measure_drift.py tries others).

    The SDK on the runtime (ONNX Runtime) with the paper's default settings protects each probe;
    the zoo's torch mobileface scores it, as an evaluator independent of the engine would.
    """
    from edgecloak.cloaker import Cloaker, SafetyPolicy

    rec = recognizer("mobileface")
    faces = [p for p in celeb_faces if p.face is not None]
    labels = np.array([p.identity for p in faces])
    emb = embed_faces([(p.image, p.face.landmarks) for p in faces], [rec])["mobileface"].numpy()
    identities = sorted(set(labels))
    held_out = {name: [int(j) for j in np.flatnonzero(labels == name)[2:5]] for name in identities}
    held_out_all = {j for photos in held_out.values() for j in photos}
    probes = [int(i) for name in identities for i in np.flatnonzero(labels == name)[:2]]
    # paper defaults, K = 10; this measures protection itself, so no self-check retries or drops
    cloaker = Cloaker.load(bundle=bundle, backend="onnxruntime", policy=SafetyPolicy(retries=0, on_fail="keep"),
                           **TIPIMConfig(seed=seed).to_dict())

    moved = rank1_target = 0
    for i in probes:
        p = faces[i]
        others = [n for n in identities if n != p.identity]
        chosen = [held_out[n][r] for r in range(3) for n in others][:10]
        targets = TargetBank([str(labels[j]) for j in chosen], {"mobileface": emb[chosen]})
        result = cloaker.protect(p.image, targets=targets)
        diff = np.abs(result.image.astype(np.int16) - p.image.astype(np.int16))
        assert diff.max() <= 12  # the eps bound, exactly, on every pixel of the output
        found = detector.detect(result.image)
        face = max(found, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
        probe = embed_face(result.image, face.landmarks, [rec])["mobileface"][0].numpy()
        gallery = [j for j in range(len(faces)) if j != i and j not in held_out_all]
        top = gallery[int((emb[gallery] @ probe).argmax())]
        clean_top = gallery[int((emb[gallery] @ emb[i]).argmax())]
        moved += labels[top] != p.identity
        rank1_target += labels[top] in others
        print(f"{p.path.name[:40]}: true {p.identity}, rank-1 clean {labels[clean_top]}, protected {labels[top]}"
              f" (target chosen: {result.faces[0].target})")
    print(f"white-box mobileface: {moved}/10 moved off their identity (Rank-1-UT), {rank1_target}/10 at a target")
    return int(moved), int(rank1_target)


@pytest.mark.slow
def test_whitebox_protection_on_real_photos(recognizer, detector, celeb_faces, mobileface_k10):
    """Paper defaults, white-box mobileface, through the SDK: >= 9 of 10 probes no longer rank their
    true identity first.

    The paper's protocol: the gallery holds the users' other photos AND the target identities'
    other photos. Per identity (photos in sorted order): photos 0-1 are probes, photos 2-4 are
    "target photos", held out of the gallery so nobody is matched to the very image a mask was
    optimised towards. A user's K = 10 targets are target photos of the 4 other identities, taken
    round-robin. The gallery is every other photo. Each protected photo is re-read the way a
    downstream system would: detect again, align, embed.
    """
    moved, rank1_target = protect_probes_whitebox(recognizer, detector, celeb_faces, mobileface_k10)
    # measured 10/10 and 10/10 on the runtime in every variant of scripts/measure_drift.py (threads 1
    # and 2, torch kernels of the scorer, ORT optimisation basic) and for diversity seeds 1-3 (other
    # trajectories, as another machine's rounding would give): one and two probes of room
    assert moved >= 9
    assert rank1_target >= 8  # and impersonation: a target identity is the rank-1 answer


def test_budget_fades_out_at_region_edges_inside_the_photo():
    """No hard rectangle: the per-pixel budget ramps to ~0 at region edges that are inside the photo."""
    from edgecloak.runtime.align import ARCFACE_TEMPLATE_112

    geometry = {"m": CropGeometry(112)}
    inside = FaceView.around(ARCFACE_TEMPLATE_112 + 200, (600, 600), geometry)
    w = inside.edge_weight()[0, 0]
    h_, w_ = inside.region_hw
    assert w.shape == (h_, w_) and inside.feather > 3
    assert w[h_ // 2, w_ // 2] == 1.0
    assert w[0, w_ // 2] < 0.2 and w[h_ // 2, -1] < 0.2
    touching = FaceView.around(ARCFACE_TEMPLATE_112, (600, 600), geometry)  # region starts at the photo corner
    assert touching.box[:2] == (0, 0)
    assert touching.edge_weight()[0, 0, 0, touching.region_hw[1] // 2] == 1.0  # the photo border needs no fade
    limit = 12 * w
    x0 = torch.full((1, 3, h_, w_), 100.0)
    out = _attack(eps=12).finalise(x0 + 50, x0, limit)
    assert torch.equal(out - x0, limit.floor().expand_as(out))
