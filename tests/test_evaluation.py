"""Evaluation metrics on hand-made cases whose answers are known, and the split rule."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from edgecloak.evaluation.metrics import dodging_rate, psnr, rank_metrics, ranked_identities, ssim, threshold_at_far
from edgecloak.evaluation.protocol import split_photos


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# a gallery of three identities, two photos each, in three orthogonal directions (plus a little tilt)
GALLERY = unit([[1, 0.1, 0], [1, 0, 0.1], [0.1, 1, 0], [0, 1, 0.1], [0.1, 0, 1], [0, 0.1, 1]])
LABELS = ["a", "a", "b", "b", "c", "c"]


def test_identities_are_ranked_by_their_best_photo():
    probe = unit([[0.2, 1, 0.5]])  # closest to b, then c, then a
    assert ranked_identities(probe, GALLERY, LABELS) == [["b", "c", "a"]]


def test_rank_metrics_on_a_known_gallery():
    probes = unit([[1, 0, 0.2], [0, 1, 0.2], [0, 0.3, 1]])  # ranks: (a, c, b), (b, c, a), (c, b, a)
    true = ["a", "a", "a"]  # all three probes are photos of a
    targets = [{"b"}, {"b"}, {"b"}]
    m = rank_metrics(probes, true, targets, GALLERY, LABELS, ks=(1, 2, 3))
    assert m["rank1_ut"] == pytest.approx(2 / 3)  # probes 2 and 3 no longer rank a first
    assert m["rank1_t"] == pytest.approx(1 / 3)  # only probe 2 ranks the target b first
    assert m["rank2_t"] == pytest.approx(2 / 3)  # probe 3 has b second (c, b, a)
    assert m["rank3_ut"] == 0.0  # with 3 identities the true one is always in the top 3
    with pytest.raises(ValueError):
        rank_metrics(probes, true[:2], targets, GALLERY, LABELS)


def test_threshold_at_far_lets_through_exactly_that_fraction():
    impostors = np.arange(100) / 100.0
    t = threshold_at_far(impostors, far=0.05)
    assert np.mean(impostors > t) == pytest.approx(0.05)
    assert dodging_rate(np.array([t - 0.1, t, t + 0.1, t + 0.2]), t) == 0.5
    with pytest.raises(ValueError):
        threshold_at_far(impostors, far=0.0)


def test_psnr_and_ssim_on_known_images():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert psnr(img, img) == math.inf
    brighter = np.clip(img.astype(int) + 1, 0, 255).astype(np.uint8)
    changed = np.mean(brighter != img)
    assert psnr(img, brighter) == pytest.approx(10 * math.log10(255**2 / changed))
    assert ssim(img, img) == pytest.approx(1.0)
    # flat images: SSIM reduces to the luminance term (2 mx my + C1) / (mx^2 + my^2 + C1)
    a, b = np.full((32, 32), 100, np.uint8), np.full((32, 32), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100**2 + 110**2 + c1), rel=1e-9)
    noisy = [np.clip(img + rng.normal(0, s, img.shape), 0, 255).astype(np.uint8) for s in (2, 8, 32)]
    scores = [ssim(img, n) for n in noisy]
    assert scores[0] > scores[1] > scores[2]


def test_split_is_deterministic_and_keeps_optimisation_photos_out_of_every_gallery():
    photos = {name: [Path(f"{name}/{i:03d}.jpg") for i in range(n)] for name, n in (("a", 9), ("b", 7), ("c", 12))}
    split = split_photos(photos, probes_per_identity=2, targets_per_identity=3)
    shuffled = {name: random.Random(1).sample(paths, len(paths)) for name, paths in photos.items()}
    assert split_photos(shuffled, 2, 3) == split  # the order the files were listed in does not matter
    held_out = {p for paths in split.optimisation.values() for p in paths}
    assert all(len(split.optimisation[n]) == 3 and len(split.probes[n]) == 2 for n in photos)
    for name, probes in split.probes.items():
        assert not set(probes) & held_out
        for probe in probes:
            gallery = split.gallery_for(probe)
            paths = [p for _, p in gallery]
            assert probe not in paths and not set(paths) & held_out
            own = [p for n, p in gallery if n == name]
            assert len(own) == len(photos[name]) - 3 - 1  # the user's other photos are there
    with pytest.raises(ValueError, match="needs at least 6"):
        split_photos({"d": photos["a"][:5]}, 2, 3)


def test_split_of_the_real_identity_photos():
    from edgecloak.export.zoo.photos import identity_photos

    photos = identity_photos()
    split = split_photos(photos)
    assert set(split.probes) == set(photos) and len(photos) == 5
    for name in photos:
        gallery = split.gallery_for(split.probes[name][0])
        assert sum(n == name for n, _ in gallery) >= 1
