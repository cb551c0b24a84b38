"""TIP-IM on engine graphs, in numpy: the product's TIP-IM loop, on every backend and device.

The same algorithm as the torch oracle (``edgecloak.export.reference.oracle``, tests only), step for
step, with the autograd replaced by what the bundle's graphs give:

* the K identity-loss gradients at x: per surrogate ONE gradient-graph call (one forward, K
  vector-Jacobian products with cotangents ``2 w_s (f_s(r) - f_s(t_k))``), pulled back from the
  aligned crop to the photo pixels with the exact adjoint of the bilinear warp (``runtime.warp``);
  between re-scorings, the held target's gradient alone (the bundle's single-target graph: one
  forward, one VJP);
* greedy insertion: one embedding-graph call per surrogate scores the K candidate images (every
  ``rescore_every`` steps; in between, one candidate towards the held target).

Everything else (rounding, momentum, normalisation, sign/L2 step, projection, MMD, the random
draws of input diversity) is plain numpy on buffers allocated once per face. With the same seed
and settings the result matches the oracle's (see tests/test_runtime.py).

Beyond the paper, six transfer techniques (``TIPIMConfig.ti_sigma``, ``smooth_probability``,
``mirror_probability``, ``resize_probability``, ``surrogate_weighting``, ``feature_dropout``; all off
by default, and then the loop is the oracle's step for step): Gaussian smoothing of the gradient
(translation invariance), a smoothed copy of the image as an input transform, a mirrored crop and a
low-resolution crop as two more, per-surrogate gradient normalisation (see ``runtime.smoothing``),
and surrogate model augmentation: each gradient step sees every surrogate with a fresh random share
of its convolution outputs dropped (the gradient graphs' ``feature_keep`` input). And what
people see: the per-pixel budget (``TIPIMConfig.support``, ``perceptual``) and the colour share of
each step (``chroma``; a greyscale photo stays greyscale) come from ``runtime.budget_map``.

Example:
    >>> loop = RuntimeTIPIM(engines, TIPIMConfig(steps=20))           # doctest: +SKIP
    >>> result = loop.run(region, face, targets)                       # doctest: +SKIP
    >>> targets.identities[result.target_index]                        # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from edgecloak.errors import ModelError

from .backends.base import SurrogateEngine
from .budget_map import budget_map, chroma_direction, is_greyscale
from .config import TIPIMConfig
from .diversity import dropout_mask, maybe_low_resolution, maybe_mirror, sample_augmentations, sample_jitter
from .face_region import FaceRegion
from .mmd import mmd_gradient
from .parallel import for_row_chunks
from .smoothing import photo_pixels_per_face_pixel, smooth_planes
from .targets import TargetBank
from .warp import BilinearSampler, LowResolutionSampler, crop_to_src_matrix, resized_crop_matrix, to_3x3


@dataclass
class RuntimeResult:
    """The protected region [1,3,h,w] (float32 on the uint8 grid) and what the loop settled on.

    ``seconds`` splits the loop's time: ``graphs`` (engine calls), ``warp`` (crops and their
    adjoints), ``other`` (the numpy algebra).
    """

    region: np.ndarray
    target_index: int
    gains: list[float]
    seconds: dict[str, float] = field(default_factory=dict)


class _Clock:
    """Accumulates wall time per phase with almost no overhead."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.totals[phase] += now - self._last
        self._last = now


def face_sampler(face: FaceRegion, name: str, size: int, jitter: np.ndarray | None,
                 resolution: float | None = None) -> BilinearSampler | LowResolutionSampler:
    """Surrogate ``name``'s size x size crop of the face (maybe jittered); with ``resolution`` < 1,
    rendered at that share of ``size`` and resized back up (``LowResolutionSampler``)."""
    small = size if resolution is None else max(8, int(round(size * resolution)))
    if small >= size:
        matrix, pool = crop_to_src_matrix(face.matrices[name], size, jitter)
        return BilinearSampler(matrix, face.region_hw, size, pool)
    photo_to_small = resized_crop_matrix(size, small) @ to_3x3(face.matrices[name])
    matrix, pool = crop_to_src_matrix(photo_to_small, small, jitter)
    return LowResolutionSampler(BilinearSampler(matrix, face.region_hw, small, pool), size)


class RuntimeTIPIM:
    """TIP-IM over an ensemble of ``SurrogateEngine``s (any backend)."""

    def __init__(self, engines: Sequence[SurrogateEngine], config: TIPIMConfig | None = None):
        if not engines:
            raise ValueError("the loop needs at least one surrogate engine")
        self.engines = list(engines)
        self.config = config or TIPIMConfig()
        # Equal ensemble weights: each surrogate's loss is on the same (cosine) scale.
        self.weights = {e.id: 1.0 / len(self.engines) for e in self.engines}
        # K is fixed in the gradient graphs: the loop can chase at most that many targets
        self.max_targets = min(e.files.num_targets for e in self.engines)

    # -- the algebra shared with the torch oracle (same formulas, numpy) -------------------
    def bounds(self, x0: np.ndarray, limit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-pixel [lo, hi] of the L_inf ball around x0 within [0, 255] (computed once per face)."""
        return np.maximum(x0 - limit, 0.0), np.minimum(x0 + limit, 255.0)

    def project(self, x: np.ndarray, x0: np.ndarray, bounds: tuple[np.ndarray, np.ndarray],
                out: np.ndarray | None = None) -> np.ndarray:
        """Into the eps-ball around x0 (L_inf always; L2 too when eps_l2 is set) and [0, 255]."""
        if self.config.eps_l2 is not None:
            delta = np.subtract(x, x0, out=out)
            norms = np.maximum(np.sqrt((delta.reshape(len(delta), -1) ** 2).sum(1)), 1e-12)
            delta *= np.minimum(self.config.eps_l2 / norms, 1.0).astype(np.float32).reshape(-1, 1, 1, 1)
            x = np.add(delta, x0, out=delta)
        return np.clip(x, bounds[0], bounds[1], out=out)

    def finalise(self, x: np.ndarray, x0: np.ndarray, limit: np.ndarray) -> np.ndarray:
        """Round to the uint8 grid and re-clip so |out - x0| <= floor(limit) holds exactly per pixel."""
        bound = np.floor(limit)
        return np.clip(np.minimum(np.maximum(np.round(x), x0 - bound), x0 + bound), 0.0, 255.0)

    @staticmethod
    def normalise(g: np.ndarray) -> np.ndarray:
        """Divide each gradient in the batch by its mean absolute value (MI-FGSM), in place."""
        scale = np.maximum(np.abs(g).reshape(len(g), -1).mean(1), 1e-12).astype(np.float32)
        g /= scale.reshape(-1, 1, 1, 1)
        return g

    def step(self, x: np.ndarray, momenta: np.ndarray, out: np.ndarray) -> np.ndarray:
        """x - alpha * sign(m) (L_inf) or x - alpha * sqrt(n) * m/||m|| (L2), for every candidate."""
        cfg = self.config
        if cfg.norm == "linf":
            np.sign(momenta, out=out)
            out *= np.float32(-cfg.alpha)
        else:
            flat = momenta.reshape(len(momenta), -1)
            norms = np.maximum(np.sqrt((flat * flat).sum(1)), 1e-12).astype(np.float32)
            np.divide(momenta, norms.reshape(-1, 1, 1, 1), out=out)
            out *= np.float32(-cfg.alpha * math.sqrt(flat.shape[1]))
        out += x
        return out

    def gain(self, emb: dict[str, np.ndarray], real: dict[str, np.ndarray], targets: TargetBank) -> np.ndarray:
        """Per-image [B, K] ensemble-mean of ||f(x)-f(r)|| - ||f(x)-f(t)|| (unsquared L2)."""
        total = 0.0
        for e in self.engines:
            d_real = np.linalg.norm(emb[e.id] - real[e.id], axis=1, keepdims=True)
            d_targets = np.linalg.norm(emb[e.id][:, None, :] - targets.embeddings[e.id][None], axis=2)
            total = total + self.weights[e.id] * (d_real - d_targets)
        return total

    # -- the loop --------------------------------------------------------------------------
    def embed(self, region: np.ndarray, samplers: dict[str, BilinearSampler]) -> dict[str, np.ndarray]:
        """Unit embeddings {id: [B,D]} (copies) of a region batch [B,3,h,w] through the samplers."""
        return {e.id: e.embed(samplers[e.id].forward(region)).copy() for e in self.engines}

    def fooled(self, emb: dict[str, np.ndarray], row: int, real: dict[str, np.ndarray], targets: TargetBank,
               margin: float) -> bool:
        """Is candidate ``row`` closer to its best target than to the original by ``margin`` (cosine)
        for every surrogate? (``TIPIMConfig.stop_margin``)"""
        t = int(self.gain({k: v[row:row + 1] for k, v in emb.items()}, real, targets)[0].argmax())
        return all(float(emb[e.id][row] @ targets.embeddings[e.id][t]) - float(emb[e.id][row] @ real[e.id][0]) > margin
                   for e in self.engines)

    def _feature_keep_buffers(self) -> dict[str, np.ndarray]:
        """Per surrogate, the buffer its dropout masks are drawn into ({} when feature dropout is off)."""
        if self.config.feature_dropout <= 0:
            return {}
        missing = [e.id for e in self.engines if not e.can_drop_features]
        if missing:
            raise ModelError(f"feature_dropout needs gradient graphs with a feature_keep input, and {', '.join(missing)} "
                             "has none (a bundle exported without feature dropout, or the torch backend): re-export "
                             "the bundle with --feature-dropout, or set feature_dropout to 0")
        return {e.id: np.empty((1, e.files.feature_keep_size), np.float32) for e in self.engines}

    def settle(self, region: np.ndarray, face: FaceRegion, targets: TargetBank, start: np.ndarray) -> RuntimeResult:
        """No iterations: ``start`` projected into the budget around ``region`` (the ORIGINAL pixels
        [1,3,h,w]), rounded, and scored; for a start that needs no refinement (a cloak profile's
        mask at N 0). Every pixel keeps its floor(limit), as after ``run``."""
        x0 = np.ascontiguousarray(region, dtype=np.float32)
        limit = budget_map(x0, face, self.config.eps, self.config.support, self.config.perceptual)
        x = self.project(np.asarray(start, np.float32), x0, self.bounds(x0, limit))
        out = self.finalise(x, x0, limit)
        plain = {e.id: face_sampler(face, e.id, e.files.input_size, None) for e in self.engines}
        target_index = int(self.gain(self.embed(out, plain), self.embed(x0, plain), targets)[0].argmax())
        return RuntimeResult(region=out, target_index=target_index, gains=[])

    def run(
        self,
        region: np.ndarray,
        face: FaceRegion,
        targets: TargetBank,
        start: np.ndarray | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> RuntimeResult:
        """Protect one face region [1,3,h,w] (float32 0..255, the ORIGINAL pixels).

        ``start``: where to begin (an earlier face of the same photo may have changed pixels of this
        region); the budget is always around the original. ``targets`` must be numpy embeddings,
        at most the graphs' K of them.
        """
        cfg = self.config
        k = targets.size
        if not 1 <= k <= self.max_targets:
            raise ValueError(f"{k} targets, but the graphs take 1..{self.max_targets}")
        rng = np.random.default_rng(cfg.seed)
        clock = _Clock()
        x0 = np.ascontiguousarray(region, dtype=np.float32)
        sizes = {e.id: e.files.input_size for e in self.engines}
        plain = {e.id: face_sampler(face, e.id, sizes[e.id], None) for e in self.engines}
        real = self.embed(x0, plain)
        # cotangents padded to the graph's K with zeros: the extra gradients are ignored
        cotangents = {}
        for e in self.engines:
            c = np.zeros((1, e.files.num_targets, e.files.embedding_dim), np.float32)
            c[0, :k] = 2.0 * self.weights[e.id] * (real[e.id] - targets.embeddings[e.id])
            cotangents[e.id] = c
        limit = budget_map(x0, face, cfg.eps, cfg.support, cfg.perceptual)
        chroma = 0.0 if is_greyscale(x0) else cfg.chroma  # a greyscale photo stays greyscale
        face_px = photo_pixels_per_face_pixel(face.landmarks)  # the transfer techniques' sigmas, in photo px
        bounds = self.bounds(x0, limit)
        x = x0.copy() if start is None else self.project(np.asarray(start, np.float32), x0, bounds)
        # the large arrays are allocated once per face and reused by every step
        shape = x0.shape[1:]
        momentum = np.zeros_like(x0)
        carried = np.zeros_like(x0)
        grads = np.zeros((k, *shape), np.float32)
        pulled = np.zeros((k, *shape), np.float32)
        candidates = np.zeros((k, *shape), np.float32)
        rounded = np.zeros((k, *shape), np.float32)
        x_round = np.zeros_like(x0)
        x_smoothed = np.zeros_like(x0) if cfg.smooth_probability > 0 else None
        candidate_crops = {e.id: np.zeros((k, 3, sizes[e.id], sizes[e.id]), np.float32) for e in self.engines}
        keeps = self._feature_keep_buffers()
        best_x, best_gain = x.copy(), -math.inf
        gains: list[float] = []
        held, winners = 0, []  # the target held between re-scorings, and the re-scorings' winners
        clock.lap("other")
        for step_index in range(cfg.steps):
            rescore = cfg.rescores(step_index, winners)
            rows = list(range(k)) if rescore else [held]  # the targets stepped towards this step
            n = len(rows)
            jitter = sample_jitter(cfg.diversity, rng) if cfg.diversity else None
            jitter = maybe_mirror(jitter, cfg.mirror_probability, rng)
            resolution = maybe_low_resolution(cfg.resize_probability, cfg.resize_min_scale, rng)
            np.round(x, out=x_round)  # the surrogates see the uint8 image (straight-through)
            seen = x_round
            # drawn only when the technique is on, so the paper's loop keeps the oracle's random stream
            smoothed = cfg.smooth_probability > 0 and rng.random() < cfg.smooth_probability
            if smoothed:
                seen = smooth_planes(x_round, cfg.smooth_sigma * face_px, out=x_smoothed)
            grads[:n].fill(0.0)
            for e in self.engines:
                sampler = plain[e.id] if jitter is None and resolution is None else \
                    face_sampler(face, e.id, sizes[e.id], jitter, resolution)
                crop = sampler.forward(seen)
                clock.lap("warp")
                # a held-target step asks for that target's gradient alone: one VJP where the bundle
                # has the single-target graph, instead of the K graph's K (runtime.backends.base)
                cot = cotangents[e.id] if rescore else cotangents[e.id][:, held:held + 1]
                keep = dropout_mask(cfg.feature_dropout, rng, keeps[e.id]) if keeps else None
                clock.lap("other")
                _, grad = e.embed_and_grad(crop, cot, keep)
                clock.lap("graphs")
                chosen = grad[0, :k] if rescore else grad[0, :1]
                pulled_back = sampler.adjoint(chosen, out=pulled[:n])
                if cfg.surrogate_weighting == "normalised":  # no surrogate's gradient drowns the others
                    self.normalise(pulled_back)
                grads[:n] += pulled_back
                clock.lap("warp")
            if smoothed:  # through the blur: a symmetric kernel is its own adjoint
                smooth_planes(grads[:n], cfg.smooth_sigma * face_px, out=grads[:n])
            if cfg.ti_sigma > 0:
                smooth_planes(grads[:n], cfg.ti_sigma * face_px, out=grads[:n])
            clock.lap("other")
            if cfg.gamma > 0:
                _, g_mmd = mmd_gradient(x, x0, sample_augmentations(cfg.mmd_batch, rng), weight=cfg.gamma)
                grads[:n] += g_mmd
            chroma_direction(grads[:n], chroma)
            np.multiply(momentum, np.float32(cfg.mu), out=carried)

            def candidate_rows(lo: int, hi: int, _tag: str) -> None:
                # per candidate: normalised gradient + carried momentum, step, projection, rounding
                m = self.normalise(grads[lo:hi])
                m += carried
                self.project(self.step(x, m, out=candidates[lo:hi]), x0, bounds, out=candidates[lo:hi])
                np.round(candidates[lo:hi], out=rounded[lo:hi])

            for_row_chunks(n, candidate_rows)  # the candidates' algebra on every core
            momenta = grads  # normalised in place and momentum added: now the candidates' momenta
            clock.lap("other")
            emb = {}
            for e in self.engines:
                crops = plain[e.id].forward(rounded[:n], out=candidate_crops[e.id][:n])
                clock.lap("warp")
                emb[e.id] = e.embed(crops).copy()
                clock.lap("graphs")
            cand_gain = np.logaddexp(0.0, self.gain(emb, real, targets).max(axis=1))  # softplus
            best = int(cand_gain.argmax())
            if rescore:
                held = rows[best]
                winners.append(held)
            gains.append(float(cand_gain[best]))
            x[...] = candidates[best]
            momentum[...] = momenta[best]
            if gains[-1] > best_gain:
                best_x[...], best_gain = x, gains[-1]
            clock.lap("other")
            if on_step is not None:
                on_step(len(gains))
            if cfg.stop_margin is not None and self.fooled(emb, best, real, targets, cfg.stop_margin):
                break
        out = self.finalise(best_x if cfg.keep_best else x, x0, limit)
        target_index = int(self.gain(self.embed(out, plain), real, targets)[0].argmax())
        clock.lap("other")
        return RuntimeResult(region=out, target_index=target_index, gains=gains, seconds=dict(clock.totals))
