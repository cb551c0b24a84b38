"""Protection success rates, thresholds with few impostor pairs, and the intervals every rate carries,
on hand-made cases whose answers are known (numpy only, no models)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecloak.evaluation.metrics import (
    Rate,
    accepted,
    bootstrap_interval,
    change_outside,
    dodging_rate,
    dssim,
    far_resolved,
    far_tag,
    impostor_scores,
    linkability,
    psr_dodging,
    psr_keys,
    psr_targeted,
    similarity_to,
    threshold_at_far,
    wilson_interval,
)

# 2-D unit embeddings at known angles: user "a" has two gallery photos, target "t" one, distractor "d" one
GALLERY = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
LABELS = ["a", "a", "t", "d"]


def unit_at(degrees):
    r = np.radians(np.atleast_1d(degrees))
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_similarity_to_an_identity_is_the_max_over_its_photos():
    probes = unit_at([0, 30, 90])
    user = similarity_to(probes, GALLERY, LABELS, ["a", "a", "a"])
    # probe 0 is photo 0; probe 1 (30 deg) is 6.9 deg from photo 1 (at 36.9 deg) and 30 from photo 0: the
    # nearer photo counts; probe 2 (90 deg) is 53.1 deg from photo 1 (cos 0.6) and 90 from photo 0
    photo1 = np.arctan2(0.6, 0.8)
    assert user == pytest.approx([1.0, np.cos(photo1 - np.radians(30)), 0.6])
    targets = similarity_to(probes, GALLERY, LABELS, [{"t"}, {"t", "d"}, "t"])
    assert targets == pytest.approx([0.0, np.cos(np.radians(60)), 1.0])
    with pytest.raises(ValueError, match="no gallery photo"):
        similarity_to(probes[:1], GALLERY, LABELS, ["nobody"])
    with pytest.raises(ValueError, match="per probe"):
        similarity_to(probes, GALLERY, LABELS, ["a"])


def test_psr_on_a_hand_made_similarity_matrix():
    # similarities of 5 protected probes to their user and to their target, threshold 0.5
    to_user = np.array([0.9, 0.51, 0.5, 0.49, -0.2])
    to_target = np.array([0.1, 0.5, 0.6, 0.7, 0.95])
    assert psr_dodging(to_user, 0.5) == pytest.approx(3 / 5)  # 0.5, 0.49, -0.2 dodge
    assert psr_targeted(to_target, 0.5) == pytest.approx(3 / 5)  # 0.6, 0.7, 0.95 impersonate
    # the boundary rule: accepted means strictly above; exactly at the threshold is rejected, so a
    # probe at it counts as dodged (as dodging_rate always did) and not as an impersonation
    assert accepted(np.array([0.5]), 0.5).tolist() == [False]
    assert psr_dodging(np.array([0.5]), 0.5) == 1.0 and psr_targeted(np.array([0.5]), 0.5) == 0.0
    assert psr_dodging(to_user, 0.5) == dodging_rate(to_user, 0.5)
    assert np.isnan(psr_dodging(np.array([]), 0.5)) and np.isnan(psr_targeted(np.array([]), 0.5))


def test_psr_from_embeddings_end_to_end():
    probes = unit_at([10, 60, 85])  # drifting from user a towards target t
    t = 0.7
    user = similarity_to(probes, GALLERY, LABELS, ["a"] * 3)
    target = similarity_to(probes, GALLERY, LABELS, ["t"] * 3)
    # cos to the nearest a photo: 10 deg -> cos 10 = 0.98, 60 -> cos 23.1 = 0.92, 85 -> cos 48.1 = 0.67
    assert user == pytest.approx([0.985, 0.920, 0.667], abs=1e-3)
    assert psr_dodging(user, t) == pytest.approx(1 / 3)  # only the probe at 85 deg is no longer accepted as a
    assert psr_targeted(target, t) == pytest.approx(2 / 3)  # cos 30 = 0.87 and cos 5 = 0.996 are above 0.7


def test_threshold_at_far_with_few_impostor_pairs_is_the_maximum():
    rng = np.random.default_rng(3)
    few = rng.uniform(-0.2, 0.4, 999)  # fewer than 1 / 1e-3 pairs: no impostor may pass
    assert threshold_at_far(few, 1e-3) == few.max()
    assert np.mean(few > threshold_at_far(few, 1e-3)) == 0.0
    assert not far_resolved(999, 1e-3) and far_resolved(1000, 1e-3) and far_resolved(5000, 1e-3)
    enough = rng.uniform(-0.2, 0.4, 5000)  # 5 of 5000 may pass at 1e-3
    t = threshold_at_far(enough, 1e-3)
    assert np.sum(enough > t) == 5 and t == np.sort(enough)[-6]
    assert threshold_at_far(np.array([0.3]), 1e-3) == 0.3
    with pytest.raises(ValueError, match="no impostor scores"):
        threshold_at_far(np.array([]), 1e-3)
    # a stricter FAR never lowers the threshold
    assert threshold_at_far(enough, 1e-3) >= threshold_at_far(enough, 1e-2)


def test_impostor_scores_are_each_different_label_pair_once():
    e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    scores = impostor_scores(e, ["a", "a", "b", "c"])
    # pairs (0,2) (0,3) (1,2) (1,3) (2,3); (0,1) is genuine
    assert sorted(scores.tolist()) == pytest.approx([0.0, 0.0, 0.6, 0.6, 0.8])
    assert impostor_scores(e.astype(np.float32), ["a", "a", "b", "c"]).dtype == np.float32
    with pytest.raises(ValueError):
        impostor_scores(e, ["a", "b"])


def test_far_tags_name_the_metrics():
    assert far_tag(1e-3) == "far1e-3" and far_tag(0.01) == "far1e-2" and far_tag(2.5e-4) == "far2.5e-4"
    assert psr_keys(1e-3) == ("psr_dodge_far1e-3", "psr_target_far1e-3")


def binary(k, n):
    return np.r_[np.ones(k), np.zeros(n - k)]


def test_bootstrap_interval_is_deterministic_and_contains_the_estimate():
    x = binary(11, 15)
    assert bootstrap_interval(x) == bootstrap_interval(x)  # same seed, same interval
    low, high = bootstrap_interval(x)
    assert 0 <= low < x.mean() < high <= 1
    # any per-probe values, not only 0/1
    v = np.random.default_rng(0).normal(0.5, 0.1, 40)
    low, high = bootstrap_interval(v, confidence=0.9)
    assert low < v.mean() < high
    assert bootstrap_interval(v, confidence=0.5)[1] - bootstrap_interval(v, confidence=0.5)[0] < high - low
    with pytest.raises(ValueError):
        bootstrap_interval(np.array([]))
    with pytest.raises(ValueError):
        bootstrap_interval(x, confidence=1.0)
    with pytest.raises(ValueError):
        bootstrap_interval(np.array([0.5, np.nan]))


def test_bootstrap_interval_narrows_with_n():
    widths = []
    for n in (15, 60, 240):
        low, high = bootstrap_interval(binary(round(0.6 * n), n))
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] == pytest.approx(4, rel=0.25)  # ~ 1 / sqrt(n)


@pytest.mark.parametrize("k,n", [(3, 15), (8, 15), (12, 15), (14, 15), (10, 30), (25, 30), (20, 50), (45, 50)])
def test_bootstrap_roughly_matches_wilson_on_binary_data(k, n):
    b_low, b_high = bootstrap_interval(binary(k, n))
    w_low, w_high = wilson_interval(k, n)
    assert w_low <= k / n <= w_high
    # the percentile bootstrap is the narrower of the two near 0 and 1; within 0.1 at n 15, closer with n
    tol = 0.1 if n == 15 else 0.07
    assert b_low == pytest.approx(w_low, abs=tol) and b_high == pytest.approx(w_high, abs=tol)


def test_wilson_interval_known_values():
    # Wilson (1927) / Newcombe (1998) 95%: 15/15 -> [0.796, 1], 0/15 -> [0, 0.204], 8/15 -> [0.301, 0.752]
    assert wilson_interval(15, 15) == pytest.approx((0.7961, 1.0), abs=1e-3)
    assert wilson_interval(0, 15) == pytest.approx((0.0, 0.2039), abs=1e-3)
    assert wilson_interval(8, 15) == pytest.approx((0.3009, 0.7519), abs=1e-3)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_a_matrix_is_resampled_by_probe_rows():
    # 20 probes x 3 recognizers whose outcomes agree within a probe (a probe fools all or none):
    # resampling rows keeps them together, so the interval is that of 20 probes, not of 60 cells
    probe_outcome = binary(12, 20)
    matrix = np.repeat(probe_outcome[:, None], 3, axis=1)
    rows = bootstrap_interval(matrix)
    assert rows == bootstrap_interval(probe_outcome)  # identical: the statistic is the row mean
    cells = bootstrap_interval(matrix.ravel())  # the wrong unit: 60 "independent" outcomes
    assert (rows[1] - rows[0]) > 1.4 * (cells[1] - cells[0])
    # the matrix statistic is the mean over all cells
    m = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=float)
    assert Rate.of(m).value == pytest.approx(m.mean()) and Rate.of(m).n == 4
    with pytest.raises(ValueError):
        bootstrap_interval(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        bootstrap_interval(np.zeros((2, 2, 2)))


def test_rate_formats_and_round_trips():
    r = Rate(0.8333, 15, 0.65, 0.95)
    assert str(r) == "0.83 [0.65, 0.95] (n=15)" and r.interval() == "0.83 [0.65, 0.95]"
    assert Rate.from_dict(r.to_dict()) == r
    r = Rate.of(binary(11, 15))
    assert r.n == 15 and r.value == pytest.approx(11 / 15) and r.low <= r.value <= r.high
    assert (r.low, r.high) == bootstrap_interval(binary(11, 15))


def test_rate_falls_back_to_wilson_where_the_bootstrap_is_a_point():
    # 15 of 15: every resample is 15 of 15, so the percentile bootstrap says [1, 1]; Wilson does not
    assert bootstrap_interval(np.ones(15)) == (1.0, 1.0)
    r = Rate.of(np.ones(15))
    assert (r.low, r.high) == pytest.approx(wilson_interval(15, 15)) and r.high == 1.0 and r.low < 0.81
    r = Rate.of(np.zeros((15, 2)))
    assert r.value == 0.0 and r.low == 0.0 and r.high == pytest.approx(wilson_interval(0, 15)[1])


# -- leave-one-family-out aggregation (cross-family transfer) ------------------------------------------
def _outcome(method, probe, evaluator, rank1_ut, transform="none"):
    identity, photo = probe
    return {"method": method, "identity": identity, "photo": photo, "transform": transform,
            "evaluator": evaluator, "rank1_ut": rank1_ut, "psr_dodge_far1e-3": 1.0 - rank1_ut}


def test_cross_family_matrix_and_mean_on_hand_made_outcomes():
    from edgecloak.evaluation.harness import cross_family_table

    p1, p2, p3 = ("u", "1.jpg"), ("u", "2.jpg"), ("v", "1.jpg")
    per_probe = [
        # mobileface held out: one recognizer, probes 1, 0, 1
        *(_outcome("b-without-mobileface", p, "mobileface", v) for p, v in ((p1, 1), (p2, 0), (p3, 1))),
        # faceres held out: a probe's value is its mean over the family's two recognizers: 0.5, 1, 0
        *(_outcome("b-without-faceres", p, e, v) for p, e, v in ((p1, "faceres", 1), (p1, "faceres-deep", 0),
                                                                  (p2, "faceres", 1), (p2, "faceres-deep", 1),
                                                                  (p3, "faceres", 0), (p3, "faceres-deep", 0))),
        # facenet held out: probe 3 was not scored there
        *(_outcome("b-without-facenet", p, "facenet-casia", v) for p, v in ((p1, 0), (p2, 1))),
        # ignored: a surrogate's (white-box) score, another transform, another method
        _outcome("b-without-faceres", p1, "mobileface", 1), _outcome("b-without-faceres", p3, "faceres", 1, "jpeg75"),
        _outcome("balanced", p3, "faceres", 1),
    ]
    held_out = {"mobileface": ("b-without-mobileface", ["mobileface"]),
                "faceres": ("b-without-faceres", ["faceres", "faceres-deep"]),
                "facenet": ("b-without-facenet", ["facenet-casia"])}
    table = cross_family_table(per_probe, held_out, ["rank1_ut", "psr_dodge_far1e-3"])
    matrix, mean = table["matrix"], table["mean"]
    assert list(matrix) == ["mobileface", "faceres", "facenet"]
    assert matrix["mobileface"]["rank1_ut"]["value"] == pytest.approx(2 / 3)
    assert matrix["faceres"]["rank1_ut"]["value"] == pytest.approx(0.5)
    assert matrix["facenet"]["rank1_ut"]["value"] == pytest.approx(0.5)
    assert [matrix[f]["rank1_ut"]["n"] for f in matrix] == [3, 3, 2]
    # per probe, the mean over the families it was scored in: (1 + .5 + 0) / 3, (0 + 1 + 1) / 3, (1 + 0) / 2
    per_probe_means = np.array([0.5, 2 / 3, 0.5])
    assert mean["rank1_ut"] == Rate.of(per_probe_means).to_dict()
    assert mean["rank1_ut"]["value"] == pytest.approx(per_probe_means.mean()) and mean["rank1_ut"]["n"] == 3
    assert mean["psr_dodge_far1e-3"]["value"] == pytest.approx(1 - per_probe_means.mean())
    for family in matrix:  # every cell is a Rate: value inside its interval
        for d in matrix[family].values():
            assert 0 <= d["low"] <= d["value"] <= d["high"] <= 1
    # a family nothing scored: None cells, and the mean is over the others
    empty = cross_family_table(per_probe, {**held_out, "facenet": ("b-without-facenet", ["facenet-keras"])},
                               ["rank1_ut"])
    assert empty["matrix"]["facenet"]["rank1_ut"] is None
    assert empty["mean"]["rank1_ut"]["value"] == pytest.approx(np.mean([(1 + 0.5) / 2, (0 + 1) / 2, (1 + 0) / 2]))


def test_change_off_the_face_is_the_share_of_the_total_absolute_change():
    before = np.full((4, 4, 3), 100, np.uint8)
    support = np.zeros((4, 4))
    support[1:3, 1:3] = 0.5  # any positive weight is the face
    assert change_outside(before, before, support) == 0.0  # nothing changed: nothing off the face
    inside = before.copy()
    inside[1:3, 1:3] = 90
    assert change_outside(before, inside, support) == 0.0
    both = inside.copy()
    both[0, 0] = [110, 95, 100]  # 15 levels off the face against 4 * 3 * 10 = 120 on it
    assert change_outside(before, both, support) == pytest.approx(15 / 135)
    assert change_outside(np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 255, np.uint8), np.zeros((2, 2))) == 1.0


def test_dssim_is_half_the_ssim_gap():
    assert dssim(1.0) == 0.0 and dssim(0.0) == 0.5 and dssim(-1.0) == 1.0 and dssim(None) is None


def test_linkability_counts_each_same_user_pair_once_and_only_above_the_threshold():
    a, b, c = unit_at([0.0, 30.0, 90.0])  # cos(a, b) 0.87, cos(a, c) 0, cos(b, c) 0.5
    assert linkability({"u": [a, b, c]}, 0.5) == (1 / 3, 3)  # 0.5 is not above 0.5: rejected
    assert linkability({"u": [a, b], "v": [c, c]}, 0.9) == (0.5, 2)  # users are never paired across
    assert linkability({"u": [a], "v": [b]}, 0.0) == (None, 0)  # one photo each: nothing to link
