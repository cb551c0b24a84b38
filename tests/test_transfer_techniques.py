"""The loop's transfer techniques (gradient smoothing, a smoothed copy, a mirrored crop, a
low-resolution crop, normalised surrogate weighting, feature dropout): what each changes, that the
budget still holds, and that off means the paper's loop."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgecloak.runtime.align import ARCFACE_TEMPLATE_112
from edgecloak.errors import ModelError
from edgecloak.runtime.bundle import Bundle
from edgecloak.runtime.config import TIPIMConfig
from edgecloak.runtime.diversity import MIRROR, dropout_mask, maybe_low_resolution, maybe_mirror
from edgecloak.runtime.protector import RuntimeProtector
from edgecloak.runtime.smoothing import photo_pixels_per_face_pixel, smooth_planes
from edgecloak.runtime.tipim import RuntimeTIPIM, face_sampler
from edgecloak.errors import UsageError
from edgecloak.recipe import resolve

from test_runtime import loop_inputs, mobileface_bundle, sample_face  # noqa: F401  (session fixtures)


@pytest.fixture(scope="session")
def dropout_bundle(tmp_path_factory):
    """A real mobileface bundle (K 10) whose preset drops features: graphs with feature_keep."""
    from edgecloak.export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "mobileface-dropout"
    return export_bundle(out, ["mobileface"], TIPIMConfig(steps=10, feature_dropout=0.1), num_targets=10)


def test_smooth_planes_blurs_each_plane_alone_and_in_place():
    rng = np.random.default_rng(0)
    batch = rng.normal(size=(2, 3, 20, 24)).astype(np.float32)
    batch[1, 2] = 5.0  # a constant plane stays constant
    copy = smooth_planes(batch, 2.0)
    assert copy is not batch and copy.shape == batch.shape
    assert np.allclose(copy[1, 2], 5.0, atol=1e-5)
    # smoothing lowers the variance of noise and keeps each plane's mean (reflected borders)
    assert copy[0, 0].std() < 0.5 * batch[0, 0].std()
    assert abs(float(copy[0, 0].mean() - batch[0, 0].mean())) < 0.05
    in_place = batch.copy()
    assert smooth_planes(in_place, 2.0, out=in_place) is in_place
    assert np.array_equal(in_place, copy)
    assert np.array_equal(smooth_planes(batch, 0.0), batch)  # sigma 0: a copy


def test_a_symmetric_blur_is_its_own_adjoint_away_from_the_border():
    """<blur(a), b> == <a, blur(b)>: why the loop pulls a gradient back through the smoothed copy by
    blurring it. Exact for a symmetric kernel where no reflection happens (supports inside)."""
    rng = np.random.default_rng(1)
    a = np.zeros((1, 1, 40, 40), np.float32)
    b = np.zeros((1, 1, 40, 40), np.float32)
    a[0, 0, 12:28, 12:28] = rng.normal(size=(16, 16))
    b[0, 0, 12:28, 12:28] = rng.normal(size=(16, 16))
    left = float((smooth_planes(a, 1.5) * b).sum())
    right = float((a * smooth_planes(b, 1.5)).sum())
    assert left == pytest.approx(right, rel=1e-4, abs=1e-4)


def test_face_pixels_scale_with_the_eye_distance():
    assert photo_pixels_per_face_pixel(ARCFACE_TEMPLATE_112) == pytest.approx(1.0)
    assert photo_pixels_per_face_pixel(ARCFACE_TEMPLATE_112 * 3.0 + 40.0) == pytest.approx(3.0)


@pytest.mark.parametrize("bad", [{"ti_sigma": -1.0}, {"smooth_probability": 1.5}, {"smooth_sigma": -0.1},
                                 {"surrogate_weighting": "loudest"}, {"feature_dropout": 0.6},
                                 {"feature_dropout": -0.1}, {"mirror_probability": 1.5},
                                 {"mirror_probability": -0.5}, {"resize_probability": 2.0},
                                 {"resize_min_scale": 0.1}, {"resize_min_scale": 1.0}])
def test_bad_technique_settings_are_refused(bad):
    with pytest.raises(ValueError):
        TIPIMConfig(**bad)
    with pytest.raises(UsageError):
        resolve("edge", settings=bad)


def _run(bundle, sample_face, **settings):
    protector = RuntimeProtector.from_bundle(bundle, "onnxruntime")
    targets, region, pixels = loop_inputs(protector, sample_face)
    result = RuntimeTIPIM(protector.engines, TIPIMConfig(steps=6, **settings)).run(pixels, region, targets)
    return result, pixels


@pytest.mark.parametrize("settings", [{"ti_sigma": 1.0}, {"smooth_probability": 1.0}, {"mirror_probability": 0.5},
                                      {"resize_probability": 0.5},
                                      {"surrogate_weighting": "normalised", "ti_sigma": 0.5,
                                       "smooth_probability": 0.5}])
def test_each_technique_changes_the_mask_and_keeps_the_budget(mobileface_bundle, sample_face, settings):
    plain, pixels = _run(mobileface_bundle, sample_face)
    changed, _ = _run(mobileface_bundle, sample_face, **settings)
    delta = changed.region - pixels
    assert np.abs(delta).max() <= 12 and np.all(changed.region == np.round(changed.region))
    assert 0 <= changed.region.min() and changed.region.max() <= 255
    # the technique did something: a different mask (far more than float noise: > 5% of pixels)
    assert np.mean(changed.region != plain.region) > 0.05
    assert changed.gains[-1] > changed.gains[0]  # and the loop still climbs


def test_smoothed_gradients_make_a_smoother_mask(mobileface_bundle, sample_face):
    """TI's point: the mask varies less from one pixel to the next."""
    plain, pixels = _run(mobileface_bundle, sample_face)
    smooth, _ = _run(mobileface_bundle, sample_face, ti_sigma=2.0)

    def roughness(region):
        d = region - pixels
        return float(np.abs(np.diff(d, axis=3)).mean() + np.abs(np.diff(d, axis=2)).mean())

    assert roughness(smooth.region) < 0.8 * roughness(plain.region)


def test_normalised_weighting_of_one_surrogate_is_the_paper_loop(mobileface_bundle, sample_face):
    """With one surrogate, per-surrogate normalisation only rescales the one gradient, which the
    loop normalises anyway: the same mask as equal weighting (and no extra random draws)."""
    plain, _ = _run(mobileface_bundle, sample_face)
    normalised, _ = _run(mobileface_bundle, sample_face, surrogate_weighting="normalised")
    assert np.mean(plain.region != normalised.region) < 0.005


@pytest.mark.parametrize("rate", [0.03, 0.1, 0.5])
def test_dropout_masks_drop_their_share_and_keep_the_mean(rate):
    out = np.empty((1, 200_000), np.float32)
    mask = dropout_mask(rate, np.random.default_rng(0), out)
    assert mask is out
    dropped = round(rate * 256) / 256  # one random byte per value
    values = np.unique(mask).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - dropped))
    assert abs(float((mask == 0).mean()) - dropped) < 0.005
    assert abs(float(mask.mean()) - 1.0) < 0.01  # inverted dropout: activations keep their scale
    again = dropout_mask(rate, np.random.default_rng(0), np.empty_like(out))
    assert np.array_equal(again, mask)  # the seed decides the masks


def test_feature_dropout_changes_the_mask_keeps_the_budget_and_is_seeded(dropout_bundle, mobileface_bundle,
                                                                         sample_face):
    plain, pixels = _run(mobileface_bundle, sample_face)
    first, _ = _run(dropout_bundle, sample_face, feature_dropout=0.1)
    second, _ = _run(dropout_bundle, sample_face, feature_dropout=0.1)
    assert np.array_equal(first.region, second.region)  # the seed decides every mask
    assert np.abs(first.region - pixels).max() <= 12 and np.mean(first.region != plain.region) > 0.05
    assert first.gains[-1] > first.gains[0]
    # the same graphs fed ones are the plain network: the plain loop's result, pixel for pixel
    ones, _ = _run(dropout_bundle, sample_face)
    assert np.mean(ones.region != plain.region) < 0.005


def test_only_bundles_that_drop_features_pay_for_the_input(dropout_bundle, mobileface_bundle):
    """The plain bundle's graphs have no feature_keep input (it costs time on every call); the
    dropping preset's have it, sized to the network's convolution outputs."""
    import onnx

    plain, dropping = Bundle.load(mobileface_bundle), Bundle.load(dropout_bundle)
    assert plain.surrogates[0].feature_keep_size == 0 and dropping.surrogates[0].feature_keep_size > 0
    for files, names in ((plain.surrogates[0], ["x", "cotangents"]),
                         (dropping.surrogates[0], ["x", "cotangents", "feature_keep"])):
        for graph in (files.grad_graph, files.held_grad_graph):
            assert [i.name for i in onnx.load(str(graph), load_external_data=False).graph.input] == names


def test_feature_dropout_leaves_the_engine_plain_afterwards(dropout_bundle):
    """The engine's next call without a mask is the plain network again (the dropped mask must not
    linger in its bound input)."""
    protector = RuntimeProtector.from_bundle(dropout_bundle, "onnxruntime")
    engine = protector.engines[0]
    assert engine.can_drop_features
    s, d = engine.files.input_size, engine.files.embedding_dim
    rng = np.random.default_rng(3)
    crop = (rng.random((1, 3, s, s)) * 255).astype(np.float32)
    cot = rng.normal(size=(1, 1, d)).astype(np.float32)
    plain = engine.embed_and_grad(crop, cot)[1].copy()
    mask = dropout_mask(0.1, rng, np.empty((1, engine.files.feature_keep_size), np.float32))
    dropped = engine.embed_and_grad(crop, cot, mask)[1].copy()
    assert np.linalg.norm(dropped - plain) > 0.1 * np.linalg.norm(plain)
    assert np.array_equal(engine.embed_and_grad(crop, cot)[1], plain)
    with pytest.raises(ValueError, match="feature_keep shape"):
        engine.embed_and_grad(crop, cot, mask[:, 1:])


def test_feature_dropout_on_graphs_without_the_input_fails_with_one_line(mobileface_bundle, sample_face):
    """A bundle whose graphs take no feature_keep (a plain preset's, or one from before feature
    dropout) protects, but asking it for feature dropout is a ModelError that says to re-export,
    not a crash in the engine."""
    protector = RuntimeProtector.from_bundle(mobileface_bundle, "onnxruntime")
    assert not protector.engines[0].can_drop_features
    targets, region, pixels = loop_inputs(protector, sample_face)
    with pytest.raises(ModelError, match="re-export the bundle"):
        RuntimeTIPIM(protector.engines, TIPIMConfig(steps=2, feature_dropout=0.1)).run(pixels, region, targets)


def test_mirrors_are_drawn_at_their_rate_and_only_when_asked_for():
    rng = np.random.default_rng(0)
    draws = [maybe_mirror(None, 0.3, rng) for _ in range(4000)]
    assert abs(sum(d is not None for d in draws) / 4000 - 0.3) < 0.03
    jitter = np.array([[1.0, -0.1, 0.02], [0.1, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert np.array_equal(maybe_mirror(jitter, 1.0, rng), jitter @ MIRROR)  # the crop mirrored, then jittered
    # off: no uniform drawn, so the loop's random stream (the oracle's) is untouched
    rng, fresh = np.random.default_rng(5), np.random.default_rng(5)
    assert maybe_mirror(jitter, 0.0, rng) is jitter and rng.random() == fresh.random()


def test_a_mirrored_crop_is_the_plain_crop_flipped_and_its_adjoint_is_exact(mobileface_bundle, sample_face):
    """The mirror acts about the crop's centre: crop column u shows what the plain crop shows at
    column S - u (a flip, one pixel off the array's own). The warp's adjoint stays its transpose,
    which is what carries a mirrored crop's gradient back to the right photo pixels."""
    protector = RuntimeProtector.from_bundle(mobileface_bundle, "onnxruntime")
    _, region, pixels = loop_inputs(protector, sample_face)
    s = protector.engines[0].files.input_size
    plain = face_sampler(region, "mobileface", s, None).forward(pixels)
    mirrored_sampler = face_sampler(region, "mobileface", s, MIRROR)
    mirrored = mirrored_sampler.forward(pixels)
    assert np.abs(mirrored[..., 1:] - plain[..., :0:-1]).max() < 0.5  # 0..255 scale: interpolation rounding only
    assert np.abs(mirrored - plain).mean() > 5  # a face is not symmetric to the pixel
    assert_adjoint_is_exact(mirrored_sampler, pixels.shape)


def assert_adjoint_is_exact(sampler, source_shape: tuple[int, ...]) -> None:
    """<forward(x), g> = <x, adjoint(g)> for random x and g: the adjoint is the forward's transpose."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=source_shape).astype(np.float32)
    crop = sampler.forward(x)
    g = rng.normal(size=crop.shape).astype(np.float32)
    left = float((crop.astype(np.float64) * g).sum())
    right = float((x.astype(np.float64) * sampler.adjoint(g)).sum())
    assert left == pytest.approx(right, rel=1e-4)


def test_low_resolution_views_are_drawn_at_their_rate_in_their_range_and_only_when_asked_for():
    rng = np.random.default_rng(0)
    draws = [maybe_low_resolution(0.4, 0.6, rng) for _ in range(4000)]
    scales = [d for d in draws if d is not None]
    assert abs(len(scales) / 4000 - 0.4) < 0.03
    assert 0.6 <= min(scales) and max(scales) < 1.0 and np.std(scales) > 0.08  # spread over [0.6, 1)
    rng, fresh = np.random.default_rng(5), np.random.default_rng(5)
    assert maybe_low_resolution(0.0, 0.5, rng) is None and rng.random() == fresh.random()  # off: no draw


def _high_frequency_energy(crop: np.ndarray) -> float:
    return float((np.diff(crop, axis=-1) ** 2).mean() + (np.diff(crop, axis=-2) ** 2).mean())


def test_a_low_resolution_crop_is_the_same_face_with_less_detail_and_its_adjoint_is_exact(mobileface_bundle,
                                                                                          sample_face):
    """Rendered at half the input side and resized up, the crop is the plain crop as a half-size
    image shows it (the face in the same place, its finest detail lost); at a scale that rounds to
    the full side it is the plain crop. The composite warp's adjoint stays its transpose, which is
    what carries the gradient back to the photo's pixels."""
    protector = RuntimeProtector.from_bundle(mobileface_bundle, "onnxruntime")
    _, region, pixels = loop_inputs(protector, sample_face)
    s = protector.engines[0].files.input_size
    plain = face_sampler(region, "mobileface", s, None).forward(pixels)
    low_sampler = face_sampler(region, "mobileface", s, None, resolution=0.5)
    low = low_sampler.forward(pixels)
    assert low.shape == plain.shape
    # what OpenCV makes of the plain crop shrunk to half and enlarged again: the low-resolution crop
    # is that image (same place, same detail lost), far closer to it than the plain crop is
    hwc = plain[0].transpose(1, 2, 0)
    reference = cv2.resize(cv2.resize(hwc, (s // 2, s // 2), interpolation=cv2.INTER_AREA), (s, s),
                           interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)[None]
    assert np.abs(low - reference).mean() < 0.5 * np.abs(plain - reference).mean()
    assert _high_frequency_energy(low) < 0.6 * _high_frequency_energy(plain)  # less detail
    assert np.array_equal(face_sampler(region, "mobileface", s, None, resolution=0.999).forward(pixels), plain)
    assert_adjoint_is_exact(low_sampler, pixels.shape)
