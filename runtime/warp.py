"""Bilinear crop sampling through an affine map, and its exact adjoint, in numpy (no torch).

The on-device attack needs what ``edgecloak.export.reference.view.FaceView._crop`` does with torch:
an optional ``F.avg_pool2d(region, f, stride=f, ceil_mode=True)`` followed by
``F.grid_sample(..., mode="bilinear", padding_mode="border", align_corners=False)`` -- and the
gradient of that with respect to the region's pixels. Both are linear in the region, so the forward
pass is a fixed sparse matrix (four neighbours per crop pixel, after pooling) and the gradient is its
transpose. Everything that depends only on the geometry (neighbour indices, weights, pool divisors) is
computed once in :class:`BilinearSampler`; each attack step is then a few gathers (forward) and
``np.bincount`` scatters (adjoint).

Matching torch to float32 precision needs more than the same formula: torch rounds the sampling
coordinates in float32, and one ulp of a coordinate near 400 (3e-5 px) times a 255-level edge is
already ~1e-2. So the grid is built exactly as ``FaceView`` builds it (float64 matrix product, cast
to float32, torch's unnormalisation in float32) -- see :meth:`BilinearSampler._source_coordinates`.

Example:
    >>> import numpy as np
    >>> from edgecloak.runtime.warp import BilinearSampler
    >>> shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])  # crop pixel (u, v) -> source (u + 0.5, v)
    >>> sampler = BilinearSampler(shift, src_hw=(4, 4), size=2)
    >>> src = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> sampler.forward(src)[0, 0].tolist()
    [[0.5, 1.5], [4.5, 5.5]]
    >>> sampler.adjoint(np.ones((1, 1, 2, 2), np.float32))[0, 0, 0].tolist()
    [0.5, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math

import numpy as np

from .parallel import for_row_chunks


def to_3x3(m: np.ndarray) -> np.ndarray:
    """A 2x3 or 3x3 affine matrix as 3x3 float64 (so affine maps compose with ``@``).

    Example:
        >>> to_3x3(np.eye(2, 3)).tolist()[2]
        [0.0, 0.0, 1.0]
    """
    m = np.asarray(m, dtype=np.float64)
    if m.shape == (3, 3):
        if not np.allclose(m[2], [0.0, 0.0, 1.0], rtol=0, atol=1e-9):
            raise ValueError(f"a 3x3 matrix must be affine (last row 0, 0, 1), got last row {m[2].tolist()}")
        return m
    if m.shape != (2, 3):
        raise ValueError(f"expected a 2x3 or 3x3 affine matrix, got shape {m.shape}")
    return np.vstack([m, [0.0, 0.0, 1.0]])


def crop_to_src_matrix(photo_to_crop: np.ndarray, size: int, jitter: np.ndarray | None) -> tuple[np.ndarray, int]:
    """The crop -> (pooled) source matrix and pool factor (the one place for this math: the torch
    oracle's ``FaceView._crop`` calls it too).

    ``photo_to_crop`` is ``FaceView.matrices[name]`` (2x3, region-relative photo pixel -> crop pixel),
    ``size`` the crop size and ``jitter`` an optional 3x3 similarity in normalised crop coordinates
    (``FaceView.random_jitter``). The float64 operations are ``FaceView``'s, in the same order, so
    the result is bit-identical to the ``inv`` it hands to ``grid_sample``.

    Returns ``(crop_to_src, pool)``: a 2x3 float64 matrix mapping crop pixel (u, v) to coordinates in
    the source *after* pooling, and the pool factor to pass to :class:`BilinearSampler` (1 where
    ``FaceView`` does not pool, i.e. where its ``factor`` is below 2).

    Example:
        >>> m, pool = crop_to_src_matrix(np.array([[0.4, 0.0, 0.0], [0.0, 0.4, 0.0]]), 112, None)
        >>> pool, m.round(6).tolist()  # 2.5 photo px per crop px: pool by 2, 1.25 pooled px per crop px
        (2, [[1.25, 0.0, -0.25], [0.0, 1.25, -0.25]])
    """
    m = to_3x3(photo_to_crop)
    if jitter is not None:
        # jitter acts in normalised crop coordinates centred on the crop
        to_unit = np.array([[1 / size, 0, -0.5], [0, 1 / size, -0.5], [0, 0, 1.0]])
        m = np.linalg.inv(to_unit) @ np.asarray(jitter, dtype=np.float64) @ to_unit @ m
    inv = np.linalg.inv(m)
    # photo pixels per crop pixel, as ``FaceView`` rounds it (floor of a computed determinant: an
    # exact 4x scale gives det 15.999999999999998 and factor 3 -- kept, since parity is the point)
    factor = math.floor(math.sqrt(abs(np.linalg.det(inv[:2, :2]))))
    if factor < 2:
        return inv[:2].copy(), 1
    # pooled pixel i covers photo pixels [i*f, (i+1)*f): its centre is photo (i*f + (f-1)/2)
    pool = np.array(
        [
            [1 / factor, 0, 0.5 / factor - 0.5],
            [0, 1 / factor, 0.5 / factor - 0.5],
            [0, 0, 1.0],
        ]
    )
    return (pool @ inv)[:2].copy(), factor


def resized_crop_matrix(size: int, small: int) -> np.ndarray:
    """3x3: pixel (u, v) of an S x S crop -> the same point in pixels of a ``small`` x ``small`` crop of
    the same field of view (pixel centres at (u + 0.5) / S of the side, as ``align_corners=False``
    has them).

    Left-multiplied onto a photo -> crop matrix it renders the crop at the smaller size; as a
    :class:`BilinearSampler`'s ``crop_to_src`` it resizes the small crop back up (see
    :class:`LowResolutionSampler`).

    Example:
        >>> resized_crop_matrix(4, 2)[:2].tolist()  # crop pixel 0.5 (between 0 and 1) -> small pixel 0
        [[0.5, 0.0, -0.25], [0.0, 0.5, -0.25]]
    """
    r = small / size
    return np.array([[r, 0.0, 0.5 * r - 0.5], [0.0, r, 0.5 * r - 0.5], [0.0, 0.0, 1.0]])


def _window_counts(n: int, pool: int) -> np.ndarray:
    """Elements per pooling window along one axis (the last window may be partial under ceil_mode)."""
    starts = np.arange(-(-n // pool)) * pool
    return np.minimum(starts + pool, n) - starts


class BilinearSampler:
    """Samples an S x S crop from a source region [B,C,h,w] through an affine map, and its adjoint.

    ``crop_to_src`` (2x3 or 3x3, float64) maps crop pixel (u, v), u, v in 0..S-1, to (x, y) in the
    source after pooling, pixel centres on integers (what :func:`crop_to_src_matrix` returns). With
    ``pool >= 2`` the source is first average-pooled exactly like
    ``torch.nn.functional.avg_pool2d(src, pool, stride=pool, ceil_mode=True)``: the pooled size is
    ``ceil(h / pool)`` and a partial last window is divided by the number of pixels it actually holds
    (padding is 0, so torch's ``count_include_pad`` counts only in-image pixels). Coordinates outside
    the pooled source are clamped to its border (``padding_mode="border"``).

    ``forward`` is then ``grid_sample(pooled, grid, "bilinear", "border", align_corners=False)`` and
    ``adjoint`` its exact transpose (the vector-Jacobian product with respect to ``src``). Both work
    in float32 and reuse internal scratch buffers, so one instance must not be used from two threads
    at once.

    Example:
        >>> sampler = BilinearSampler(np.array([[2.0, 0, 0], [0, 2.0, 0]]), src_hw=(9, 9), size=4, pool=2)
        >>> sampler.pooled_hw
        (5, 5)
        >>> crop = sampler.forward(np.ones((1, 3, 9, 9), np.float32))
        >>> crop.shape, bool(np.allclose(crop, 1.0))
        ((1, 3, 4, 4), True)
    """

    def __init__(self, crop_to_src: np.ndarray, src_hw: tuple[int, int], size: int, pool: int = 1):
        h, w = (int(v) for v in src_hw)
        size, pool = int(size), max(int(pool), 1)
        if h <= 0 or w <= 0 or size <= 0:
            raise ValueError(f"need a non-empty source and crop, got src_hw={src_hw}, size={size}")
        m = to_3x3(crop_to_src)
        if not np.isfinite(m).all():
            raise ValueError("crop_to_src holds NaN or infinite values")
        self.crop_to_src = m.copy()  # 3x3
        self.src_hw = (h, w)
        self.size = size
        self.pool = pool
        # ceil_mode with padding 0 and kernel == stride gives ceil(n / pool) windows per axis
        self.pooled_hw = (-(-h // pool), -(-w // pool))
        ph, pw = self.pooled_hw

        ix, iy = self._source_coordinates(m, ph, pw, size)
        # torch: x_w = floor(x); w = x - x_w; e = 1 - w (and n, s for y); weights s*e, s*w, n*e, n*w,
        # all in float32, so the weights are bit-identical to the ones grid_sample uses.
        x0 = np.floor(ix)
        y0 = np.floor(iy)
        wx = ix - x0
        wy = iy - y0
        ex = np.float32(1) - wx
        sy = np.float32(1) - wy
        xi = x0.astype(np.intp)
        yi = y0.astype(np.intp)
        # At the far border x == pw - 1 exactly, so the east weight is exactly 0; torch skips that
        # out-of-range neighbour, we point it at the border pixel instead (same product, valid index).
        xe = np.minimum(xi + 1, pw - 1)
        ys = np.minimum(yi + 1, ph - 1)
        self._index = np.stack([yi * pw + xi, yi * pw + xe, ys * pw + xi, ys * pw + xe])  # [4, S*S]
        self._weight = np.stack([sy * ex, sy * wx, wy * ex, wy * wx]).astype(np.float32)  # [4, S*S]
        self._index_flat = self._index.ravel()  # for one bincount per channel in the adjoint

        if pool >= 2:
            div = _window_counts(h, pool)[:, None] * _window_counts(w, pool)[None, :]
            self._divisor = div.astype(np.float32)
        else:
            self._divisor = None
        self._scratch: dict[str, np.ndarray] = {}

    @staticmethod
    def _source_coordinates(m: np.ndarray, ph: int, pw: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Clamped float32 source coordinates of every crop pixel, rounded the way torch rounds them.

        ``FaceView`` builds grid_sample's normalised grid in float64 and casts it to float32; torch's
        CPU kernel then unnormalises with ``(g + 1) * (size / 2) - 0.5`` in float32, which the compiler
        fuses into one FMA (measured: without the fusion the crop differs from torch by up to ~2e-3 on
        0..255 data; with it, bit-identically). The product of two float32 values is exact in float64
        and subtracting 0.5 stays exact there, so float64 arithmetic rounded once reproduces the FMA.
        """
        to_norm = np.array([[2.0 / pw, 0, 1.0 / pw - 1], [0, 2.0 / ph, 1.0 / ph - 1], [0, 0, 1.0]])
        theta = (to_norm @ m)[:2]
        uv = np.arange(size, dtype=np.float64)
        uu, vv = np.meshgrid(uv, uv)
        pix = np.stack([uu, vv, np.ones_like(uu)], axis=-1)  # S,S,3, as in ``FaceView``
        grid = (pix @ theta.T).astype(np.float32).reshape(-1, 2)
        one = np.float32(1)
        gx1 = (grid[:, 0] + one).astype(np.float64)  # float32 add, as torch does
        gy1 = (grid[:, 1] + one).astype(np.float64)
        ix = (gx1 * float(np.float32(pw) / 2) - 0.5).astype(np.float32)
        iy = (gy1 * float(np.float32(ph) / 2) - 0.5).astype(np.float32)
        # border padding: clamp into [0, size - 1] before interpolating
        ix = np.minimum(np.float32(pw - 1), np.maximum(ix, np.float32(0)))
        iy = np.minimum(np.float32(ph - 1), np.maximum(iy, np.float32(0)))
        return ix, iy

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        buf = self._scratch.get(name)
        if buf is None or buf.shape != shape:
            buf = np.empty(shape, dtype=np.float32)
            self._scratch[name] = buf
        return buf

    @staticmethod
    def _check_out(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
        if out is None:
            return np.empty(shape, dtype=np.float32)
        if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}, got {out.dtype} {out.shape}")
        return out

    def _pool_plane(self, plane: np.ndarray, pooled: np.ndarray) -> None:
        """avg_pool2d(plane, pool, stride=pool, ceil_mode=True) of one [h,w] plane into ``pooled``."""
        p = self.pool
        h, w = self.src_hw
        pooled.fill(0.0)
        # One strided add per window offset, rows outer and columns inner: torch's float32 summation
        # order (0 + x00 + x01 + ... ), so the pooled values are bit-identical; a pixel missing from
        # a partial window simply adds nothing.
        for dy in range(p):
            ny = len(range(dy, h, p))
            for dx in range(p):
                nx = len(range(dx, w, p))
                pooled[:ny, :nx] += plane[dy::p, dx::p]
        pooled /= self._divisor

    def _unpool_plane(self, pooled: np.ndarray, plane: np.ndarray) -> None:
        """The pool's transpose for one plane: every pixel of a window gets its pooled value / divisor."""
        p = self.pool
        h, w = self.src_hw
        pooled /= self._divisor
        for dy in range(p):
            ny = len(range(dy, h, p))
            for dx in range(p):
                nx = len(range(dx, w, p))
                plane[dy::p, dx::p] = pooled[:ny, :nx]

    def forward(self, src: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The crops [B,C,S,S] float32 of a source batch ``src`` [B,C,h,w] (converted to float32).

        ``out``, if given, must be a C-contiguous float32 [B,C,S,S] array; it is filled and returned.

        Example:
            >>> sampler = BilinearSampler(np.eye(2, 3), src_hw=(3, 3), size=2)
            >>> sampler.forward(np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3))[0, 0].tolist()
            [[0.0, 1.0], [3.0, 4.0]]
        """
        src = np.ascontiguousarray(src, dtype=np.float32)
        if src.ndim != 4 or src.shape[2:] != self.src_hw:
            raise ValueError(f"src must be [B,C,{self.src_hw[0]},{self.src_hw[1]}], got {src.shape}")
        b, c = src.shape[:2]
        s = self.size
        out = self._check_out(out, (b, c, s, s))
        # Plane by plane: the (pooled) source plane stays in cache from pooling through the four
        # gathers, measured ~2x faster than whole-batch pooling and fancy-indexing all channels at once.
        planes, crops = src.reshape(b * c, *self.src_hw), out.reshape(b * c, s * s)
        # np.take and the pooling adds release the GIL: the planes are split over the CPUs
        for_row_chunks(b * c, lambda lo, hi, tag: self._forward_planes(planes[lo:hi], crops[lo:hi], tag),
                       min_rows_per_thread=3)
        return out

    def _forward_planes(self, planes: np.ndarray, crops: np.ndarray, tag: str) -> None:
        """Pool (if needed) and sample planes [n,h,w] into crops [n,S*S]; ``tag`` names the scratch."""
        s = self.size
        tmp = self._buffer("gather" + tag, (s * s,))
        pooled = self._buffer("pooled" + tag, self.pooled_hw) if self.pool >= 2 else None
        idx, wts = self._index, self._weight
        for plane, crop in zip(planes, crops):
            if pooled is not None:
                self._pool_plane(plane, pooled)
                plane = pooled
            flat = plane.reshape(-1)
            # torch's order: ((nw + ne) + sw) + se, each value times its weight
            np.take(flat, idx[0], out=crop)
            np.multiply(crop, wts[0], out=crop)
            for k in range(1, 4):
                np.take(flat, idx[k], out=tmp)
                np.multiply(tmp, wts[k], out=tmp)
                np.add(crop, tmp, out=crop)

    def adjoint(self, grad: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The transpose of :meth:`forward`: ``grad`` [B,C,S,S] -> [B,C,h,w] float32.

        Each crop pixel's gradient goes back to its four source neighbours with the forward's
        bilinear weights (a scatter-add), then, when pooling, each pooled pixel's gradient divided by
        its window's pixel count is spread over that window. ``out``, if given, must be a C-contiguous
        float32 [B,C,h,w] array; it is overwritten and returned.

        Example:
            >>> sampler = BilinearSampler(np.eye(2, 3), src_hw=(3, 3), size=2)
            >>> sampler.adjoint(np.ones((1, 1, 2, 2), np.float32))[0, 0].tolist()
            [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
        """
        grad = np.ascontiguousarray(grad, dtype=np.float32)
        s = self.size
        if grad.ndim != 4 or grad.shape[2:] != (s, s):
            raise ValueError(f"grad must be [B,C,{s},{s}], got {grad.shape}")
        b, c = grad.shape[:2]
        out = self._check_out(out, (b, c, *self.src_hw))
        grads, planes = grad.reshape(b * c, s * s), out.reshape(b * c, *self.src_hw)
        # bincount holds the GIL, but the products and the unpooling overlap across threads
        for_row_chunks(b * c, lambda lo, hi, tag: self._adjoint_planes(grads[lo:hi], planes[lo:hi], tag),
                       min_rows_per_thread=3)
        return out

    def _adjoint_planes(self, grads: np.ndarray, planes: np.ndarray, tag: str) -> None:
        """Scatter crop gradients [n,S*S] back into source planes [n,h,w]; ``tag`` names the scratch."""
        s = self.size
        weighted = self._buffer("weighted" + tag, (4, s * s))
        pooled = self._buffer("pooled" + tag, self.pooled_hw) if self.pool >= 2 else None
        n_src = self.pooled_hw[0] * self.pooled_hw[1]
        for g, plane in zip(grads, planes):
            # float32 products (as torch forms them), accumulated by bincount in float64; one call
            # per plane keeps its accumulator in cache (measured 3-6x faster than a single bincount
            # over channel-offset indices, and faster than sorted np.add.reduceat).
            np.multiply(self._weight, g, out=weighted)
            acc = np.bincount(self._index_flat, weights=weighted.reshape(-1), minlength=n_src)
            if pooled is None:
                plane.reshape(-1)[...] = acc
            else:
                pooled.reshape(-1)[...] = acc
                self._unpool_plane(pooled, plane)


class LowResolutionSampler:
    """A crop as a low-resolution photo shows it: sampled at ``inner.size`` (< ``size``) pixels, then
    bilinearly resized up to ``size``. Both stages are linear, so the adjoint is the two adjoints in
    reverse order; the interface is :class:`BilinearSampler`'s (``forward``, ``adjoint``, ``size``).

    Example:
        >>> inner = BilinearSampler(np.eye(2, 3), src_hw=(4, 4), size=2)
        >>> sampler = LowResolutionSampler(inner, size=4)
        >>> sampler.forward(np.ones((1, 1, 4, 4), np.float32)).shape
        (1, 1, 4, 4)
    """

    def __init__(self, inner: BilinearSampler, size: int):
        if inner.size >= size:
            raise ValueError(f"a low-resolution crop is smaller than {size} px, got {inner.size}")
        self.inner = inner
        self.size = int(size)
        self.resize = BilinearSampler(resized_crop_matrix(self.size, inner.size), (inner.size, inner.size), self.size)

    def forward(self, src: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The crops [B,C,size,size] of ``src`` [B,C,h,w]: rendered small, resized up."""
        return self.resize.forward(self.inner.forward(src), out=out)

    def adjoint(self, grad: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The transpose of :meth:`forward`: [B,C,size,size] -> [B,C,h,w]."""
        return self.inner.adjoint(self.resize.adjoint(grad), out=out)
