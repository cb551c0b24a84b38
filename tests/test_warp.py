"""The numpy crop sampler against the torch reference it replaces on device (FaceView._crop)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgecloak.export.reference.view import FaceView
from edgecloak.runtime.align import CropGeometry
from edgecloak.runtime.warp import BilinearSampler, crop_to_src_matrix


def _face_view(
    rng: np.random.Generator,
    size: int,
    photo_per_crop: float,
    region_hw: tuple[int, int],
) -> FaceView:
    """A FaceView whose face is ``photo_per_crop`` photo px per crop px, in a region that is smaller
    than the crop's footprint (so the crop reaches past the region and gets border-clamped)."""
    geometry = CropGeometry(size)
    angle = rng.uniform(-0.4, 0.4)
    c, s = photo_per_crop * np.cos(angle), photo_per_crop * np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    h, w = region_hw
    x0, y0 = 37, 21  # the region's corner in the photo
    centre = np.array([x0 + w / 2, y0 + h / 2]) + rng.uniform(-3, 3, 2)
    landmarks = (geometry.template() - size / 2) @ rot.T + centre
    box = (x0, y0, x0 + w, y0 + h)
    return FaceView(landmarks, box, {"net": geometry}, image_hw=(y0 + h + 50, x0 + w + 50))


def _jitter(seed: int) -> np.ndarray:
    """A 3x3 similarity about the crop centre in units of the crop size (the form
    ``FaceView.random_jitter`` draws), somewhat beyond the default bounds so crops reach further."""
    rng = np.random.default_rng(seed)
    angle = np.radians(rng.uniform(-10, 10))
    scale = 1.0 + rng.uniform(-0.1, 0.1)
    tx, ty = rng.uniform(-0.08, 0.08, 2)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def _sampler_for(view: FaceView, jitter: np.ndarray | None) -> BilinearSampler:
    size = view.geometries["net"].size
    m, pool = crop_to_src_matrix(view.matrices["net"], size, jitter)
    return BilinearSampler(m, view.region_hw, size, pool=pool)


def _clamped_fraction(sampler: BilinearSampler) -> float:
    """Share of crop pixels whose (pooled) source coordinate lies outside the source."""
    uu, vv = np.meshgrid(np.arange(sampler.size), np.arange(sampler.size))
    x, y, _ = sampler.crop_to_src @ np.stack([uu.ravel(), vv.ravel(), np.ones(uu.size)])
    ph, pw = sampler.pooled_hw
    return float(np.mean((x < 0) | (y < 0) | (x > pw - 1) | (y > ph - 1)))


CASES = [
    # size, photo px per crop px, region (h, w), expected pool
    (112, 1.3, (131, 127), 1),
    (112, 0.8, (83, 97), 1),  # face smaller than the crop: upsampling
    (112, 2.4, (241, 233), 2),  # odd region sides: partial last pool windows
    (160, 3.5, (505, 499), 3),  # 505 = 3*168 + 1, 499 = 3*166 + 1
    (224, 1.1, (229, 211), 1),
]


@pytest.mark.parametrize("size,scale,region_hw,pool", CASES)
@pytest.mark.parametrize("jittered", [False, True])
def test_forward_matches_reference_crop(size, scale, region_hw, pool, jittered):
    rng = np.random.default_rng(size * 7 + int(scale * 10) + jittered)
    view = _face_view(rng, size, scale, region_hw)
    jitter = _jitter(size + int(jittered)) if jittered else None
    m, got_pool = crop_to_src_matrix(view.matrices["net"], size, jitter)
    assert got_pool == pool
    sampler = BilinearSampler(m, view.region_hw, size, pool=got_pool)
    # the region is smaller than the crop's footprint: part of the crop is border-clamped
    assert 0.02 < _clamped_fraction(sampler) < 0.9

    region = rng.uniform(0, 255, (2, 3, *view.region_hw)).astype(np.float32)  # harsh: random pixels
    want = view._crop(torch.from_numpy(region), "net", jitter).numpy()
    got = sampler.forward(region)
    assert got.shape == want.shape == (2, 3, size, size)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("size,scale,region_hw,pool", CASES)
def test_adjoint_matches_reference_autograd(size, scale, region_hw, pool):
    rng = np.random.default_rng(size + int(scale * 100))
    view = _face_view(rng, size, scale, region_hw)
    jitter = _jitter(size)
    sampler = _sampler_for(view, jitter)
    assert sampler.pool == pool

    region = torch.from_numpy(rng.uniform(0, 255, (2, 3, *view.region_hw)).astype(np.float32)).requires_grad_(True)
    grad_out = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    view._crop(region, "net", jitter).backward(torch.from_numpy(grad_out))
    want = region.grad.numpy()
    got = sampler.adjoint(grad_out)
    assert got.shape == want.shape and got.dtype == np.float32
    scale_ = np.abs(want).max()
    assert scale_ > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale_)


@pytest.mark.parametrize("pool", [1, 2, 3])
def test_adjoint_is_the_transpose_of_forward(pool):
    rng = np.random.default_rng(pool)
    h, w, size = 100 * pool + 1, 90 * pool + 2, 64
    angle, scale = 0.3, 1.7
    m = np.array(
        [
            [scale * np.cos(angle), -scale * np.sin(angle), -10.0],
            [scale * np.sin(angle), scale * np.cos(angle), 5.0],
        ]
    )
    sampler = BilinearSampler(m, (h, w), size, pool=pool)
    a = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    b = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    lhs = float(np.dot(sampler.forward(a).ravel().astype(np.float64), b.ravel()))
    rhs = float(np.dot(a.ravel().astype(np.float64), sampler.adjoint(b).ravel()))
    assert abs(lhs - rhs) <= 1e-5 * (abs(lhs) + abs(rhs) + 1.0)


@pytest.mark.parametrize("pool,hw", [(2, (9, 11)), (3, (10, 14)), (4, (13, 13)), (3, (2, 5))])
def test_pool_matches_torch_ceil_mode_partial_windows(pool, hw):
    """Sampling the pooled source at its own pixel centres gives avg_pool2d(ceil_mode=True) back,
    including the last partial windows, which torch divides by the pixels they actually hold."""
    rng = np.random.default_rng(pool)
    src = rng.uniform(0, 255, (1, 2, *hw)).astype(np.float32)
    want = F.avg_pool2d(torch.from_numpy(src), pool, stride=pool, ceil_mode=True).numpy()
    ph, pw = want.shape[-2:]
    assert (ph, pw) == (-(-hw[0] // pool), -(-hw[1] // pool))
    # a square crop of the pooled grid's size; identity map (pixels beyond the pooled grid are clamped)
    size = max(ph, pw)
    sampler = BilinearSampler(np.eye(2, 3), hw, size, pool=pool)
    assert sampler.pooled_hw == (ph, pw)
    got = sampler.forward(src)[:, :, :ph, :pw]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    # the partial corner window really is a mean over fewer pixels (not a sum / pool**2)
    corner = src[0, 0, (ph - 1) * pool :, (pw - 1) * pool :]
    assert got[0, 0, -1, -1] == pytest.approx(corner.mean(), abs=1e-4)


def test_out_buffers_are_filled_and_returned():
    rng = np.random.default_rng(5)
    m = np.array([[1.2, 0.1, 3.0], [-0.1, 1.2, 4.0]])
    sampler = BilinearSampler(m, (61, 67), 32, pool=2)
    src = rng.uniform(0, 255, (3, 3, 61, 67)).astype(np.float32)
    grad = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)

    crop_out = np.full((3, 3, 32, 32), np.nan, np.float32)
    grad_out = np.full((3, 3, 61, 67), np.nan, np.float32)
    assert sampler.forward(src, out=crop_out) is crop_out
    assert sampler.adjoint(grad, out=grad_out) is grad_out
    np.testing.assert_array_equal(crop_out, sampler.forward(src))
    np.testing.assert_array_equal(grad_out, sampler.adjoint(grad))
    # reusing the buffers with new inputs overwrites them completely
    assert sampler.forward(src * 0, out=crop_out) is crop_out and not crop_out.any()
    assert sampler.adjoint(grad * 0, out=grad_out) is grad_out and not grad_out.any()

    with pytest.raises(ValueError):
        sampler.forward(src, out=np.empty((3, 3, 32, 32), np.float64))
    with pytest.raises(ValueError):
        sampler.adjoint(grad, out=np.empty((3, 3, 61, 66), np.float32))


def test_wrong_shapes_are_refused():
    sampler = BilinearSampler(np.eye(2, 3), (10, 12), 8)
    with pytest.raises(ValueError):
        sampler.forward(np.zeros((1, 3, 12, 10), np.float32))
    with pytest.raises(ValueError):
        sampler.adjoint(np.zeros((1, 3, 8, 9), np.float32))
    with pytest.raises(ValueError):
        BilinearSampler(np.eye(2, 2), (10, 12), 8)
    with pytest.raises(ValueError):
        BilinearSampler(np.full((2, 3), np.nan), (10, 12), 8)
    with pytest.raises(ValueError):
        BilinearSampler(np.eye(3) + np.eye(3, k=-2), (10, 12), 8)  # projective, not affine
    # a 3x3 affine is the same map as its top two rows
    m = np.array([[1.1, 0.2, 3.0], [-0.2, 1.1, 1.0]])
    src = np.random.default_rng(0).uniform(0, 255, (1, 3, 10, 12)).astype(np.float32)
    np.testing.assert_array_equal(
        BilinearSampler(np.vstack([m, [0, 0, 1]]), (10, 12), 8).forward(src),
        BilinearSampler(m, (10, 12), 8).forward(src),
    )


def test_warp_module_does_not_import_torch():
    code = "import sys, edgecloak.runtime.warp; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
