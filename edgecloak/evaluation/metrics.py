"""Protection and quality metrics (TIP-IM paper protocol), on plain numpy arrays.

Identification is at the identity level: every gallery identity is scored by its best-matching
gallery photo (cosine of unit embeddings), and identities are ranked by that score.

* Rank-k-UT (untargeted, "dodging"): the probe's TRUE identity is not among the top k.
* Rank-k-T (targeted, "impersonation"): one of the probe's TARGET identities is among the top k.
* Verification dodging: the protected probe's similarity to its own clean photos falls below the
  recognizer's threshold, chosen at a fixed false-accept rate on clean impostor pairs.

Example:
    >>> g = np.eye(3, dtype=np.float32); labels = ["a", "b", "c"]
    >>> rank_metrics(g[[1]], ["a"], [{"b"}], g, labels)["rank1_t"]
    1.0
"""

from __future__ import annotations

from typing import Iterable, Sequence

import cv2
import numpy as np


def ranked_identities(probes: np.ndarray, gallery: np.ndarray, labels: Sequence[str]) -> list[list[str]]:
    """For each probe [P,D], the gallery identities ordered by their best cosine (highest first)."""
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    scores = probes @ gallery.T  # [P, G]
    best = np.full((len(probes), len(names)), -np.inf, dtype=np.float64)
    for j, label in enumerate(labels):
        col = index[label]
        best[:, col] = np.maximum(best[:, col], scores[:, j])
    order = np.argsort(-best, axis=1, kind="stable")
    return [[names[i] for i in row] for row in order]


def rank_metrics(
    probes: np.ndarray,
    true_identities: Sequence[str],
    target_identities: Sequence[Iterable[str]],
    gallery: np.ndarray,
    labels: Sequence[str],
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Fractions of probes with Rank-k-UT and Rank-k-T for every k (keys ``rank{k}_ut``, ``rank{k}_t``)."""
    if len(probes) != len(true_identities) or len(probes) != len(target_identities):
        raise ValueError("one true identity and one target set per probe")
    ranked = ranked_identities(probes, gallery, labels)
    out: dict[str, float] = {}
    for k in ks:
        ut = [true not in ranks[:k] for ranks, true in zip(ranked, true_identities)]
        t = [bool(set(targets) & set(ranks[:k])) for ranks, targets in zip(ranked, target_identities)]
        out[f"rank{k}_ut"] = float(np.mean(ut)) if ut else float("nan")
        out[f"rank{k}_t"] = float(np.mean(t)) if t else float("nan")
    return out


def threshold_at_far(impostor_scores: np.ndarray, far: float = 0.01) -> float:
    """The smallest similarity threshold whose false-accept rate on ``impostor_scores`` is <= far.

    A pair is accepted when its score is strictly above the threshold.
    """
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    scores = np.sort(np.asarray(impostor_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(far * len(scores)))  # this many impostors may pass
    return float(scores[allowed]) if allowed < len(scores) else float(scores[-1])


def dodging_rate(genuine_scores_after: np.ndarray, threshold: float) -> float:
    """Fraction of protected probes no longer accepted as themselves (score <= threshold)."""
    scores = np.asarray(genuine_scores_after, dtype=np.float64)
    return float(np.mean(scores <= threshold)) if len(scores) else float("nan")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01,
    K2 0.03, L 255), averaged over channels."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for ch in range(x.shape[2]):
        xs, ys = x[..., ch], y[..., ch]

        def blur(img: np.ndarray) -> np.ndarray:
            return cv2.GaussianBlur(img, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

        mx, my = blur(xs), blur(ys)
        vx = blur(xs * xs) - mx * mx
        vy = blur(ys * ys) - my * my
        cov = blur(xs * ys) - mx * my
        smap = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        values.append(float(smap.mean()))
    return float(np.mean(values))
