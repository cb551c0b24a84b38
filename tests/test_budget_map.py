"""The per-pixel budget (``runtime.budget_map``): every pixel within its limit and the limit within
eps, over random photos and face placements; nothing outside the face support ever changes; the
perceptual weight gives texture more than flat skin; greyscale photos stay greyscale."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edgecloak.errors import UsageError
from edgecloak.recipe import resolve
from edgecloak.runtime.align import ARCFACE_TEMPLATE_112, CropGeometry, alignment_matrix
from edgecloak.runtime.budget_map import (
    FACE_ELLIPSE_AXES_112,
    FACE_ELLIPSE_CENTRE_112,
    budget_map,
    chroma_direction,
    face_support,
    is_greyscale,
    jnd_weight,
    texture_weight,
)
from edgecloak.runtime.config import TIPIMConfig
from edgecloak.runtime.face_region import FaceRegion
from edgecloak.runtime.protector import RuntimeProtector
from edgecloak.runtime.tipim import RuntimeTIPIM

from test_runtime import loop_inputs, mobileface_bundle, sample_face  # noqa: F401  (session fixtures)


def _placed_landmarks(scale: float, angle_deg: float, cx: float, cy: float) -> np.ndarray:
    """The 112-px template scaled, turned and moved so its centre lands on (cx, cy)."""
    a = math.radians(angle_deg)
    rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (ARCFACE_TEMPLATE_112 - 56.0) @ rot.T + np.array([cx, cy])


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(24, 96), w=st.integers(24, 96), seed=st.integers(0, 2**16),
    scale=st.floats(0.15, 1.2), angle=st.floats(-40, 40), fx=st.floats(0, 1), fy=st.floats(0, 1),
    eps=st.floats(0.5, 32), support=st.sampled_from(["box", "face", "head"]), perceptual=st.floats(0, 1),
)
def test_the_budget_bounds_every_pixel_by_eps(h, w, seed, scale, angle, fx, fy, eps, support, perceptual):
    """Any photo, any face placement (partly outside the photo too), any setting: the limit of every
    pixel lies in [0, eps], and with the face support it is 0 wherever the pixel lies outside the
    face's ellipse (computed here independently, in the 112-px face frame)."""
    rng = np.random.default_rng(seed)
    photo = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    landmarks = _placed_landmarks(scale, angle, fx * w, fy * h)
    face = FaceRegion.around(landmarks, (h, w), {"m": CropGeometry(112)})
    x0, y0, x1, y1 = face.box
    region = np.ascontiguousarray(photo[y0:y1, x0:x1].transpose(2, 0, 1)[None])
    limit = budget_map(region, face, eps, support, perceptual)
    assert limit.shape == (1, 1, *face.region_hw) and limit.dtype == np.float32
    assert np.isfinite(limit).all() and limit.min() >= 0 and limit.max() <= np.float32(eps)
    if support == "head":  # never more than the box's own fade allows
        assert np.all(limit[0, 0] <= np.float32(eps) * face.edge_weight_map() + 1e-5
                      + np.float32(eps) * face_support(face))
    if support == "face":
        m = alignment_matrix(landmarks, CropGeometry(112))
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        u = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - FACE_ELLIPSE_CENTRE_112[0]
        v = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - FACE_ELLIPSE_CENTRE_112[1]
        outside = (u / FACE_ELLIPSE_AXES_112[0]) ** 2 + (v / FACE_ELLIPSE_AXES_112[1]) ** 2 >= 1.0
        assert not limit[0, 0][outside].any()


def test_the_face_support_is_whole_at_the_centre_and_fades_to_zero():
    face = FaceRegion(ARCFACE_TEMPLATE_112 * 2.0, (0, 0, 224, 224), {})
    s = face_support(face)
    assert s[116, 112] == 1.0  # the face's centre (58, 56 in the 112 frame, scaled by 2)
    row = s[116, 112:]  # towards the cheek: monotone, smooth (no jump above 0.1), ends at 0
    assert np.all(np.diff(row) <= 1e-6) and np.abs(np.diff(row)).max() < 0.1 and row[-1] == 0.0


def test_texture_takes_more_budget_than_flat_skin_and_extremes_less():
    rng = np.random.default_rng(0)
    flat = np.full((1, 3, 32, 32), 128, np.float32)
    texture = np.clip(flat + rng.normal(0, 25, flat.shape), 0, 255).astype(np.float32)
    dark = np.full((1, 3, 32, 32), 4, np.float32)
    assert jnd_weight(texture).mean() > 2 * jnd_weight(flat).mean()
    assert jnd_weight(dark).mean() < jnd_weight(flat).mean()


def test_chroma_direction_keeps_the_brightness_change():
    g = np.random.default_rng(1).normal(size=(2, 3, 5, 5)).astype(np.float32)
    mean = g.mean(axis=1)
    out = chroma_direction(g.copy(), 0.25)
    assert np.allclose(out.mean(axis=1), mean, atol=1e-6)  # the brightness part is untouched
    assert np.allclose(out - out.mean(axis=1, keepdims=True), 0.25 * (g - g.mean(axis=1, keepdims=True)), atol=1e-6)
    assert chroma_direction(g, 1.0) is g


@pytest.mark.parametrize("bad", [{"support": "ellipse"}, {"perceptual": 1.5}, {"chroma": -0.1}])
def test_bad_budget_settings_are_refused(bad):
    with pytest.raises(ValueError):
        TIPIMConfig(**bad)
    with pytest.raises(UsageError):
        resolve("fast", settings=bad)


def _run(bundle, sample_face, pixels=None, start=None, **settings):
    protector = RuntimeProtector.from_bundle(bundle, "onnxruntime")
    targets, region, own = loop_inputs(protector, sample_face)
    pixels = own if pixels is None else pixels
    result = RuntimeTIPIM(protector.engines, TIPIMConfig(steps=6, **settings)).run(pixels, region, targets, start=start)
    return result, pixels, region


def test_nothing_outside_the_face_support_changes_and_every_pixel_keeps_its_limit(mobileface_bundle, sample_face):
    result, pixels, region = _run(mobileface_bundle, sample_face, support="face", perceptual=1.0)
    limit = budget_map(pixels, region, 12.0, "face", 1.0)
    delta = np.abs(result.region - pixels)
    assert np.all(delta <= np.floor(limit))  # every pixel within its own (perceptual) budget
    outside = face_support(region) == 0
    assert outside.mean() > 0.2  # the region's corners are background
    assert not delta[0][:, outside].any()
    assert delta.max() > 0 and result.gains[-1] > result.gains[0]  # and the face is still cloaked


def test_the_head_support_leaves_a_flat_background_alone_and_uses_the_hair(mobileface_bundle, sample_face):
    """The sample photo: a flat blue background beside the face, hair above it. With the head
    support no flat pixel outside the face's ellipse changes (no patterned rectangle), while textured
    ones around the face (hair) still carry mask."""
    result, pixels, region = _run(mobileface_bundle, sample_face, support="head")
    delta = np.abs(result.region - pixels)[0].max(axis=0)
    assert np.all(delta <= np.floor(budget_map(pixels, region, 12.0, "head")[0, 0]))
    off_face = face_support(region) == 0
    flat = off_face & (texture_weight(pixels) == 0)
    textured = off_face & (texture_weight(pixels) > 0.5)
    assert flat.mean() > 0.05 and textured.mean() > 0.05  # the photo has both around the face
    assert not delta[flat].any()
    assert delta[textured].mean() > 2.0
    assert delta[~off_face].mean() > 4.0 and result.gains[-1] > result.gains[0]  # the face is cloaked


def test_a_greyscale_photo_stays_greyscale(mobileface_bundle, sample_face):
    protector = RuntimeProtector.from_bundle(mobileface_bundle, "onnxruntime")
    _, _, colour = loop_inputs(protector, sample_face)
    grey = np.repeat(np.round(colour.mean(axis=1, keepdims=True)), 3, axis=1)
    assert is_greyscale(grey) and not is_greyscale(colour)
    result, _, _ = _run(mobileface_bundle, sample_face, pixels=grey)
    out = result.region
    assert np.array_equal(out[:, 0], out[:, 1]) and np.array_equal(out[:, 1], out[:, 2])
    assert np.abs(out - grey).max() > 0 and result.gains[-1] > result.gains[0]


def test_chroma_zero_changes_the_three_channels_alike(mobileface_bundle, sample_face):
    """chroma 0: every step changes R, G and B alike. The final deltas differ by at most the
    rounding of x.5 values to the uint8 grid (half to even: it depends on each channel's value), or
    where a channel met 0 or 255; chroma 1 (the paper) changes colour freely."""
    colour, pixels, _ = _run(mobileface_bundle, sample_face)
    alike, _, _ = _run(mobileface_bundle, sample_face, chroma=0.0)

    def colour_spread(result):
        delta = result.region - pixels
        return np.abs(delta - delta.mean(axis=1, keepdims=True)).max(axis=1)

    inside = np.all((pixels > 12) & (pixels < 243), axis=1)  # no channel can meet 0 or 255
    assert colour_spread(alike)[inside].max() <= 1.0
    assert colour_spread(alike)[inside].mean() < 0.1 * colour_spread(colour)[inside].mean()


def test_a_warm_start_leaves_no_trace_outside_the_face_support(mobileface_bundle, sample_face):
    """A camera frame starts from the previous frame's mask moved with the face: where this face's
    support is 0 the result is the original pixel, whatever the start held."""
    protector = RuntimeProtector.from_bundle(mobileface_bundle, "onnxruntime")
    _, region, pixels = loop_inputs(protector, sample_face)
    start = np.clip(pixels + np.where(np.arange(pixels.shape[-1]) % 2, 6.0, -6.0), 0, 255).astype(np.float32)
    result, _, _ = _run(mobileface_bundle, sample_face, start=start, support="face")
    outside = face_support(region) == 0
    assert np.array_equal(result.region[0][:, outside], pixels[0][:, outside])
    assert not np.array_equal(start[0][:, outside], pixels[0][:, outside])  # the start did differ there
