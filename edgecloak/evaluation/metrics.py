"""Protection and quality metrics (TIP-IM paper protocol), on plain numpy arrays.

Identification is at the identity level: every gallery identity is scored by its best-matching
gallery photo (cosine of unit embeddings), and identities are ranked by that score.

* Rank-k-UT (untargeted, "dodging"): the probe's TRUE identity is not among the top k.
* Rank-k-T (targeted, "impersonation"): one of the probe's TARGET identities is among the top k.
* Verification dodging: the protected probe's similarity to its own clean photos falls below the
  recognizer's threshold, chosen at a fixed false-accept rate on clean impostor pairs.

Protection success rate (PSR), as DiffAM, CLIP2Protect and AMT-GAN report it, is verification
at a recognizer's threshold ``t`` (``threshold_at_far`` on clean impostor pairs). One decision
rule everywhere (``accepted``): a pair is accepted as the same person when its cosine is STRICTLY
above ``t``, the rule the threshold's false-accept rate is counted with. Hence

* dodging PSR (``psr_dodging``): the fraction of protected probes NOT accepted as their user, i.e.
  ``similarity_to(probe, user) <= t``, where the similarity to an identity is the MAXIMUM cosine
  over that identity's clean gallery photos (``similarity_to``); a probe exactly at ``t`` is
  rejected, so it counts as dodged (the threshold is itself an impostor score, and that impostor
  was counted as rejected);
* targeted PSR (``psr_targeted``): the fraction accepted as a target, ``similarity_to(probe,
  targets) > t`` (the maximum over every photo of every target identity); exactly at ``t`` is not
  an impersonation.

Every rate is a mean over probes, so its uncertainty is over probes too: ``bootstrap_interval``
(percentile bootstrap; a [probes, recognizers] matrix is resampled by rows, the probe being the
unit) and ``wilson_interval`` for 0/1 data; ``Rate`` carries a value, its n and its interval.

Example:
    >>> g = np.eye(3, dtype=np.float32); labels = ["a", "b", "c"]
    >>> rank_metrics(g[[1]], ["a"], [{"b"}], g, labels)["rank1_t"]
    1.0
    >>> sims = similarity_to(g[[1]], g, labels, ["a"])   # the probe looks like b, not like a
    >>> psr_dodging(sims, threshold=0.5), psr_targeted(similarity_to(g[[1]], g, labels, [{"b"}]), 0.5)
    (1.0, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

# the intervals every reported rate carries (``Rate.of``): 95%, 2000 resamples, a fixed seed
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


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

    A pair is accepted when its score is strictly above the threshold (``accepted``). The threshold
    is the ``floor(far * n) + 1``-th highest of the n impostor scores, so ``floor(far * n)``
    impostors pass. With fewer than ``1 / far`` pairs no impostor may pass: the threshold is the
    MAXIMUM impostor score, the empirical false-accept rate is 0 and the requested rate is not
    resolved (``far_resolved``); report the pair count (``impostor_scores``) beside such a
    threshold.

    Example:
        >>> threshold_at_far(np.arange(1000) / 1000, far=1e-3)   # one impostor (0.999) may pass
        0.998
        >>> threshold_at_far(np.array([0.1, 0.3, 0.2]), far=1e-3)  # 3 pairs < 1000: the maximum
        0.3
    """
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    scores = np.sort(np.asarray(impostor_scores, dtype=np.float64).ravel())[::-1]
    if len(scores) == 0:
        raise ValueError("no impostor scores to set a threshold on")
    allowed = int(np.floor(far * len(scores)))  # this many impostors may pass
    return float(scores[allowed]) if allowed < len(scores) else float(scores[-1])


def far_resolved(n_pairs: int, far: float) -> bool:
    """Whether ``n_pairs`` impostor pairs can show a false-accept rate as low as ``far`` (at least
    one impostor may pass: ``floor(far * n_pairs) >= 1``); otherwise ``threshold_at_far`` returns the
    maximum impostor score.

    Example:
        >>> far_resolved(5000, 1e-3), far_resolved(999, 1e-3)
        (True, False)
    """
    return int(np.floor(far * n_pairs)) >= 1  # threshold_at_far's own count of impostors allowed through


def impostor_scores(embeddings: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Cosines of every unordered pair of unit ``embeddings`` [N, D] with different labels (each
    pair once, no self-pairs): the clean impostor pairs a threshold is set on.

    Example:
        >>> e = np.eye(3)[[0, 0, 1]]; impostor_scores(e, ["a", "a", "b"])   # (0,2) and (1,2)
        array([0., 0.])
    """
    e = np.asarray(embeddings)
    e = e if np.issubdtype(e.dtype, np.floating) else e.astype(np.float64)  # float32 stays float32
    labels = np.asarray(labels)
    if len(e) != len(labels):
        raise ValueError("one label per embedding")
    i, j = np.triu_indices(len(e), k=1)
    keep = labels[i] != labels[j]
    return (e @ e.T)[i[keep], j[keep]]


def dodging_rate(genuine_scores_after: np.ndarray, threshold: float) -> float:
    """Fraction of protected probes no longer accepted as themselves (score <= threshold)."""
    scores = np.asarray(genuine_scores_after, dtype=np.float64)
    return float(np.mean(scores <= threshold)) if len(scores) else float("nan")


# ----------------------------------------------------------------------------------------------
# protection success rate (verification at a threshold)
def accepted(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The verification decision: True where a score is strictly above ``threshold``.

    Example:
        >>> accepted(np.array([0.2, 0.5, 0.7]), 0.5).tolist()   # exactly at the threshold: rejected
        [False, False, True]
    """
    return np.asarray(scores, dtype=np.float64) > threshold


def similarity_to(
    probes: np.ndarray, gallery: np.ndarray, labels: Sequence[str], identities: Sequence[str | Iterable[str]]
) -> np.ndarray:
    """Per probe, the similarity to an identity: the MAXIMUM cosine between the unit probe
    embedding (row of ``probes`` [P, D]) and the unit ``gallery`` [G, D] photos labelled with that
    probe's identity; ``identities[p]`` is one name or a set of names (then the maximum over all
    their photos, e.g. every target). A probe with no such photo is refused (ValueError).

    Example:
        >>> g = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]); labels = ["a", "a", "b"]
        >>> similarity_to(np.array([[0.8, 0.6]]), g, labels, ["a"]).round(2).tolist()   # best a photo
        [0.96]
        >>> similarity_to(np.array([[0.8, 0.6]]), g, labels, [{"a", "b"}]).round(2).tolist()
        [0.96]
    """
    probes = np.atleast_2d(np.asarray(probes))
    labels = np.asarray(labels)
    if len(probes) != len(identities):
        raise ValueError("one identity (or set of identities) per probe")
    scores = probes @ np.asarray(gallery).T  # [P, G], in the embeddings' own precision (as the thresholds)
    out = np.empty(len(probes))
    for p, names in enumerate(identities):
        names = {names} if isinstance(names, str) else set(names)
        mask = np.isin(labels, sorted(names))
        if not mask.any():
            raise ValueError(f"probe {p}: no gallery photo of {sorted(names)}")
        out[p] = scores[p, mask].max()
    return out


def psr_dodging(user_similarity: np.ndarray, threshold: float) -> float:
    """Dodging protection success rate: the fraction of probes whose similarity to their user
    (``similarity_to``: max cosine over the user's clean gallery photos) is NOT accepted, i.e. is
    at or below ``threshold`` (a probe exactly at it counts as dodged; see ``accepted``).

    Example:
        >>> psr_dodging(np.array([0.1, 0.3, 0.5, 0.9]), 0.5)   # 0.5 is not above 0.5: dodged
        0.75
    """
    s = np.asarray(user_similarity, dtype=np.float64)
    return float(np.mean(~accepted(s, threshold))) if s.size else float("nan")


def psr_targeted(target_similarity: np.ndarray, threshold: float) -> float:
    """Targeted (impersonation) protection success rate: the fraction of probes whose similarity
    to the target (``similarity_to``: max cosine over the target identity's photos) is accepted,
    i.e. strictly above ``threshold`` (exactly at it is not an impersonation).

    Example:
        >>> psr_targeted(np.array([0.1, 0.3, 0.5, 0.9]), 0.5)
        0.25
    """
    s = np.asarray(target_similarity, dtype=np.float64)
    return float(np.mean(accepted(s, threshold))) if s.size else float("nan")


def far_tag(far: float) -> str:
    """A false-accept rate as it appears in metric names: 1e-3 -> ``far1e-3``, 0.025 -> ``far2.5e-2``.

    Example:
        >>> far_tag(1e-3), far_tag(0.01), far_tag(0.025)
        ('far1e-3', 'far1e-2', 'far2.5e-2')
    """
    mantissa, exponent = f"{far:e}".split("e")
    return f"far{float(mantissa):g}e{int(exponent)}"


def psr_keys(far: float) -> tuple[str, str]:
    """The result keys of the dodging and targeted protection success rates at ``far``.

    Example:
        >>> psr_keys(1e-3)
        ('psr_dodge_far1e-3', 'psr_target_far1e-3')
    """
    tag = far_tag(far)
    return f"psr_dodge_{tag}", f"psr_target_{tag}"


# ----------------------------------------------------------------------------------------------
# uncertainty
def _per_unit(values: np.ndarray) -> np.ndarray:
    """Per-probe values: a [probes] vector as it is, a [probes, recognizers] matrix as row means."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim not in (1, 2) or v.shape[0] == 0 or (v.ndim == 2 and v.shape[1] == 0):
        raise ValueError(f"want a non-empty [probes] or [probes, recognizers] array, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite")
    return v.mean(axis=1) if v.ndim == 2 else v


def bootstrap_interval(
    values: np.ndarray, confidence: float = CONFIDENCE, n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` over probes.

    ``values``: per-probe outcomes [probes] (0/1 or any per-probe number), or a [probes,
    recognizers] matrix whose statistic is the mean over all cells (a rate averaged over
    recognizers); a matrix is resampled by ROWS, so a probe and all its recognizers' outcomes stay
    together (the probe is the sampled unit, and recognizers judging one photo are not
    independent). ``n_resamples`` resamples of n probes with replacement from a generator seeded by
    ``seed`` (deterministic); the interval is the (1 - confidence) / 2 and (1 + confidence) / 2
    quantiles of the resampled means. Where every probe has the same value (all 0 or all 1) every
    resample does too and the interval is that single point; ``Rate.of`` then falls back to
    ``wilson_interval``.

    Example:
        >>> bootstrap_interval(np.r_[np.ones(12), np.zeros(3)])          # 12 of 15
        (0.6, 1.0)
        >>> bootstrap_interval(np.array([[1, 0], [1, 1], [0, 0], [1, 1]]), n_resamples=500)
        (0.25, 1.0)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    unit = _per_unit(values)
    rng = np.random.default_rng(seed)
    means = unit[rng.integers(0, len(unit), size=(n_resamples, len(unit)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def wilson_interval(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n`` (sound at 0 and n, where
    the percentile bootstrap collapses to a point).

    Example:
        >>> tuple(round(x, 3) for x in wilson_interval(15, 15))
        (0.796, 1.0)
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


@dataclass(frozen=True)
class Rate:
    """A rate over ``n`` probes with its interval: ``value`` in [low, high].

    Example:
        >>> print(Rate(0.8333, 15, 0.65, 0.95))
        0.83 [0.65, 0.95] (n=15)
        >>> Rate.of(np.r_[np.ones(14), np.zeros(1)]).to_dict()
        {'value': 0.9333333333333333, 'n': 15, 'low': 0.8, 'high': 1.0}
        >>> print(Rate.of(np.ones(15)))   # all successes: the Wilson interval, not [1, 1]
        1.00 [0.80, 1.00] (n=15)
    """

    value: float
    n: int
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.interval()} (n={self.n})"

    def interval(self, digits: int = 2) -> str:
        """``value [low, high]`` (the form a table cell shows, n stated elsewhere)."""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "n": self.n, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rate:
        return cls(float(d["value"]), int(d["n"]), float(d["low"]), float(d["high"]))

    @classmethod
    def of(cls, values: np.ndarray, confidence: float = CONFIDENCE, n_resamples: int = BOOTSTRAP_RESAMPLES,
           seed: int = BOOTSTRAP_SEED) -> Rate:
        """The mean of per-probe ``values`` ([probes] or [probes, recognizers], as in
        ``bootstrap_interval``) with its percentile-bootstrap interval over probes. Where the
        bootstrap is a single point (every probe the same: all 0 or all 1) the interval is the
        Wilson interval of ``value * n`` successes in n probes instead; n is the number of probes."""
        unit = _per_unit(values)
        value, n = float(unit.mean()), len(unit)
        low, high = bootstrap_interval(unit, confidence, n_resamples, seed)
        if low == high:
            low, high = wilson_interval(value * n, n, confidence)
        # a percentile interval of a mean brackets it in practice; keep that true at the edges too
        return cls(value, n, min(low, value), max(high, value))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def dssim(ssim_value: float | None) -> float | None:
    """Structural dissimilarity (1 - SSIM) / 2: the budget measure Fawkes reports (0: identical).

    Example:
        >>> dssim(0.93)
        0.035
    """
    return None if ssim_value is None else round((1.0 - ssim_value) / 2.0, 12)


def change_outside(original: np.ndarray, changed: np.ndarray, support: np.ndarray) -> float:
    """The share of a mask's total change (sum of |changed - original| over pixels and channels)
    that lies where ``support`` [h, w] is 0: the budget spent off the face (0 when nothing changed).

    Example:
        >>> a = np.zeros((2, 2, 3), np.uint8); b = a.copy(); b[0, 0] = 3; b[1, 1] = 1
        >>> change_outside(a, b, np.array([[1.0, 0.0], [0.0, 0.0]]))
        0.25
    """
    delta = np.abs(changed.astype(np.int16) - original.astype(np.int16)).sum(axis=2)
    total = float(delta.sum())
    return 0.0 if total == 0 else float(delta[support <= 0].sum()) / total


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


def linkability(by_user: Mapping[str, Sequence[np.ndarray]], threshold: float) -> tuple[float | None, int]:
    """(share of same-user pairs a recognizer accepts as one person, number of pairs): how often two
    photos of a user, as published, can be linked to each other (unit embeddings, cosine
    ``accepted`` above ``threshold``). For protected photos, compare it with the clean photos' own:
    a fixed mask per user could make the user's protected photos match each other.

    Example:
        >>> a, b = np.array([1.0, 0.0]), np.array([0.6, 0.8])
        >>> linkability({"u": [a, a, b], "v": [b]}, 0.7)
        (0.3333333333333333, 3)
    """
    outcomes = [bool(accepted(float(np.dot(x, y)), threshold))
                for vectors in by_user.values() for i, x in enumerate(vectors) for y in vectors[i + 1:]]
    return (float(np.mean(outcomes)) if outcomes else None), len(outcomes)
