"""Loop-budget presets: chosen from measured points by a rule, stored as data, used by the SDK and CLI."""

from __future__ import annotations

import json
import os

import pytest

from edgecloak.calibration.budget import (
    ELIGIBLE,
    OBJECTIVE,
    BudgetPoint,
    choose_presets,
    eligible,
    held_out_runs,
    pareto_front,
    point_figures,
    sweep_points,
)
from edgecloak.errors import UsageError
from edgecloak.presets import CHOSEN, DEFAULT_PRESET, SHIPPED, load_presets, preset, read_presets

OK = {"white_box_rank1_t": 1.0, "self_check_passed": 1.0}


def _row(name, seconds, protection, **kw):
    return {"name": name, "seconds": seconds, OBJECTIVE: protection, **OK, **kw}


def test_the_front_keeps_only_points_nothing_beats_on_both_axes():
    rows = [_row("slow-weak", 5, 0.1), _row("fast", 1, 0.1), _row("mid", 2, 0.3), _row("dear", 8, 0.3),
            _row("best", 9, 0.6)]
    assert [r["name"] for r in pareto_front(rows)] == ["fast", "mid", "best"]


def test_presets_come_from_eligible_points_only():
    rows = [_row("cheap-but-fails", 0.1, 0.9, self_check_passed=ELIGIBLE["self_check_passed"] - 0.1),
            _row("one-target", 0.5, 0.5, num_targets=1),  # the K sweep: measured, never a preset
            _row("a", 1, 0.1), _row("b", 2, 0.2), _row("c", 3, 0.35), _row("d", 10, 0.4)]
    assert not eligible(rows[0]) and not eligible(rows[1])
    chosen = {k: v["name"] for k, v in choose_presets(rows).items()}
    # fast the cheapest eligible; max the most protective; balanced the cheapest with 75% of the gain
    assert chosen == {"fast": "a", "balanced": "c", "max": "d"}
    with pytest.raises(ValueError):
        choose_presets(rows[:1])


def test_a_quality_variant_replaces_a_chosen_point_only_without_a_measurable_protection_loss():
    """The quality axis: the same recipe with another budget map stands in for a chosen point when it
    looks better and its paired cross-family difference does not resolve a loss (interval reaches
    0), within 20% of the time; it never enters the front on its own."""
    base = [_row("a", 1, 0.1, psnr_face=27.0), _row("c", 3, 0.35, psnr_face=27.0), _row("d", 10, 0.4, psnr_face=27.0)]

    def variant(**kw):
        return {**_row("c-face", 3.3, 0.33, axis="quality", baseline="c", psnr_face=31.0,
                       versus_baseline={"value": -0.02, "n": 40, "low": -0.08, "high": 0.03}), **kw}

    chosen = choose_presets(base + [variant()])
    assert chosen["balanced"]["name"] == "c-face" and chosen["balanced"]["replaces"]["point"] == "c"
    assert chosen["fast"]["name"] == "a" and chosen["max"]["name"] == "d"
    lost = variant(versus_baseline={"value": -0.1, "n": 40, "low": -0.18, "high": -0.02})
    assert choose_presets(base + [lost])["balanced"]["name"] == "c"  # a resolved loss: kept
    slow = variant(seconds=3.0 * 1.21)
    assert choose_presets(base + [slow])["balanced"]["name"] == "c"  # over 20% slower: kept
    cheap = variant(seconds=0.5, **{OBJECTIVE: 0.9})  # would dominate everything, but is not on the front
    assert choose_presets(base + [cheap])["fast"]["name"] == "a"
    # a profile-started point (it needs an enrolment) is measured beside the presets, never one of them
    profiled = {**_row("c-profile", 0.2, 0.9, psnr_face=27.0), "axis": "profile", "baseline": "c"}
    assert "c-profile" not in {v["name"] for v in choose_presets(base + [profiled]).values()}


def test_a_sweep_of_named_points_keeps_the_grid_order_and_refuses_unknown_names():
    names = [p.name for p in sweep_points(only=["m+f+c-n16-r4-face-p1", "m-n8"])]
    assert names == ["m-n8", "m+f+c-n16-r4-face-p1"]
    with pytest.raises(UsageError, match="no sweep point named nope"):
        sweep_points(only=["m-n8", "nope"])


def test_the_objective_is_the_cross_family_rank1_ut_not_the_siblings():
    assert OBJECTIVE == "cross_family_rank1_ut"
    # a point strong on the siblings but weak across families loses to one strong across families
    rows = [_row("siblings", 1, 0.2, unseen_rank1_ut=0.9), _row("families", 2, 0.6, unseen_rank1_ut=0.3)]
    assert [r["name"] for r in pareto_front(rows)] == ["siblings", "families"]
    assert choose_presets(rows)["max"]["name"] == "families"


M, F, C = "mobileface", "faceres", "facenet-casia"


def test_held_out_runs_of_one_surrogate_are_the_point_itself():
    # mobileface alone: leaving out faceres or facenet changes nothing, so the point is that run;
    # leaving out mobileface leaves no surrogate
    point = BudgetPoint("m-n8", (M,), {"steps": 8})
    assert held_out_runs(point) == {"faceres": ("m-n8", (M,)), "facenet": ("m-n8", (M,))}


def test_held_out_runs_of_three_surrogates_leave_each_family_out():
    point = BudgetPoint("m+f+c-n16", (M, F, C), {"steps": 16})
    assert held_out_runs(point) == {
        "mobileface": ("m+f+c-n16-without-mobileface", (F, C)),
        "faceres": ("m+f+c-n16-without-faceres", (M, C)),
        "facenet": ("m+f+c-n16-without-facenet", (M, F)),
    }
    mf = BudgetPoint("m+f-n16", (M, F))
    assert held_out_runs(mf) == {"mobileface": ("m+f-n16-without-mobileface", (F,)),
                                 "faceres": ("m+f-n16-without-faceres", (M,)), "facenet": ("m+f-n16", (M, F))}


def test_held_out_runs_skip_a_family_no_evaluator_scores():
    point = BudgetPoint("m+f+c-n16", (M, F, C))
    # no facenet evaluator: the facenet family cannot be scored; faceres-deep alone still scores faceres
    runs = held_out_runs(point, evaluators=(M, "faceres-deep"))
    assert runs == {"mobileface": ("m+f+c-n16-without-mobileface", (F, C)),
                    "faceres": ("m+f+c-n16-without-faceres", (M, C))}
    assert held_out_runs(BudgetPoint("m-n8", (M,)), evaluators=(M, F, C)) == \
        {"faceres": ("m-n8", (M,)), "facenet": ("m-n8", (M,))}


def _results(per_probe, evaluators):
    """A minimal evaluation results dict with the fields ``point_figures`` reads."""
    summary = {"method": "m+c-n8", "transform": "none", "seconds": 2.0, "steps": 9.0, "white_box_rank1_t": 1.0,
               "black_box_rank1_ut": 0.5, "self_check_passed": 1.0, "psnr_face": 30.0, "ssim_face": 0.9,
               "probes": 3}
    rows = [{"method": "m+c-n8", "transform": "none", "evaluator": e, "rank1_ut": 0.5} for e in evaluators]
    return {"settings": {"evaluators": list(evaluators), "far_strict": 1e-3}, "summary": [summary], "rows": rows,
            "per_probe": per_probe}


def test_point_figures_score_each_family_left_out_on_its_members():
    # m+c: the faceres family is scored on the point itself, the facenet family on m+c-n8-without-facenet
    # (mobileface alone); mobileface is left out too (on facenet-casia), but this run has no mobileface evaluator
    point = BudgetPoint("m+c-n8", (M, C), {"steps": 8})
    evaluators = ("faceres", "facenet-keras")
    assert held_out_runs(point, evaluators) == {"faceres": ("m+c-n8", (M, C)),
                                               "facenet": ("m+c-n8-without-facenet", (M,))}
    photos = ("1.jpg", "2.jpg", "3.jpg")
    # rank1_ut per (method, evaluator), per probe
    outcomes = {("m+c-n8", "faceres"): (1, 1, 0), ("m+c-n8", "facenet-keras"): (0, 0, 0),  # facenet: not held out
                ("m+c-n8-without-facenet", "faceres"): (0, 0, 0),  # faceres: not held out by this run
                ("m+c-n8-without-facenet", "facenet-keras"): (1, 0, 0)}
    dodge = {("m+c-n8", "faceres"): (1, 0, 0), ("m+c-n8-without-facenet", "facenet-keras"): (1, 1, 0)}
    per_probe = [{"method": m, "identity": "u", "photo": photo, "transform": "none", "evaluator": e,
                  "rank1_ut": float(values[i]), "psr_dodge_far1e-3": float(dodge.get((m, e), (0, 0, 0))[i])}
                 for (m, e), values in outcomes.items() for i, photo in enumerate(photos)]
    per_probe += [{**r, "transform": "jpeg75"} for r in per_probe]  # another transform: not counted
    row, = point_figures(_results(per_probe, evaluators), [point])
    # per probe: mean of faceres (on the point) and facenet (on the -without- run): (1+1)/2, (1+0)/2, (0+0)/2
    assert row[OBJECTIVE] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert row["cross_family"] == pytest.approx({"faceres": 2 / 3, "facenet": 1 / 3})
    assert row["cross_family_psr_dodge"] == pytest.approx(((1 + 1) / 2 + (0 + 1) / 2 + 0) / 3)
    assert row["cross_family_rate"]["n"] == 3 and row["cross_family_rate"]["value"] == pytest.approx(0.5)
    assert row["cross_family_rate"]["low"] <= 0.5 <= row["cross_family_rate"]["high"]
    # the secondary figure stays: the siblings (faceres-deep, facenet-keras) of the point's own rows
    assert row["unseen_rank1_ut"] == 0.5 and row["held_out"] == {"facenet-keras": 0.5}
    assert row["seconds"] == 2.0 and row["probes"] == 3
    # nothing scored: no objective, and the point is not judged
    empty, = point_figures(_results([], evaluators), [point])
    assert empty[OBJECTIVE] is None and empty["cross_family_rate"] is None and empty["cross_family"] == {}
    assert pareto_front([{**empty, **OK}]) == []


def test_the_sweep_runs_each_points_families_left_out(monkeypatch, tmp_path):
    from edgecloak.calibration import budget_sweep
    from edgecloak.evaluation.harness import CROSS_FAMILY

    points = [BudgetPoint("m-n8", (M,), {"steps": 8}), BudgetPoint("m+f+c-n8-x2", (M, F, C), {"steps": 8},
                                                                  num_targets=None, retries=2)]
    seen = {}

    def fake_evaluation(settings, progress, log, extra_methods=()):
        seen["settings"], seen["methods"] = settings, list(extra_methods)
        return {"settings": settings.to_dict(), "summary": [], "rows": [], "per_probe": []}

    monkeypatch.setattr(budget_sweep, "run_evaluation", fake_evaluation)
    monkeypatch.setattr(budget_sweep, "point_figures", lambda results, pts: [])
    budget_sweep.run_sweep(tmp_path, points, backend="onnxruntime", seed=3, progress=False)
    assert seen["settings"].probes_per_identity == 4
    methods = {m.name: m for m in seen["methods"]}
    assert list(methods) == ["m-n8", "m+f+c-n8-x2", "m+f+c-n8-x2-without-mobileface",
                             "m+f+c-n8-x2-without-faceres", "m+f+c-n8-x2-without-facenet"]
    assert methods["m-n8"].family == "calibration" and methods["m-n8"].held_out_family is None
    for family, surrogates in (("mobileface", (F, C)), ("faceres", (M, C)), ("facenet", (M, F))):
        m = methods[f"m+f+c-n8-x2-without-{family}"]
        assert (m.surrogates, m.held_out_family, m.family) == (surrogates, family, CROSS_FAMILY)
        assert (m.retries, m.num_targets, m.backend) == (2, None, "onnxruntime")
        assert m.config == {"steps": 8, "seed": 3} == methods["m+f+c-n8-x2"].config


def test_every_sweep_axis_is_measured_and_every_variant_has_its_baseline():
    points = sweep_points()
    axes = {p.axis for p in points}
    assert {"steps", "targets", "diversity", "mmd", "rescore", "progressive", "ensemble", "transfer", "quality",
            "profile"} <= axes
    names = [p.name for p in points]
    assert len(names) == len(set(names))  # names key the cached photos
    by_name = {p.name: p for p in points}
    assert all(p.baseline in by_name for p in points if p.baseline)  # every variant has its comparison


def test_shipped_presets_carry_their_measured_figures_and_balanced_is_the_default():
    shipped = read_presets(SHIPPED)
    assert DEFAULT_PRESET == "balanced" and set(CHOSEN) <= set(shipped)
    fast, balanced, top = (shipped[n].measured for n in CHOSEN)
    for figures in (fast, balanced, top):
        assert eligible(figures)  # each keeps white-box protection and the self-check
        assert figures["probes"] >= 15
    assert fast["seconds"] <= balanced["seconds"] <= top["seconds"]
    # the figure they were chosen by: the objective, or for a file chosen before it the unseen Rank-1-UT
    judged = OBJECTIVE if all(f.get(OBJECTIVE) is not None for f in (fast, balanced, top)) else "unseen_rank1_ut"
    assert fast[judged] <= balanced[judged] <= top[judged]
    data = json.loads(SHIPPED.read_text())
    assert data["default"] == DEFAULT_PRESET and data["measured"]["machine"]


def test_an_installed_calibration_overrides_the_shipped_choice(tmp_path, monkeypatch):
    from edgecloak import presets
    from edgecloak.calibration.budget import write_presets_file

    shipped_paper = preset("paper").settings
    monkeypatch.setenv("EDGECLOAK_HOME", str(tmp_path))
    mine = preset("max").measured | {"name": "mine"}
    chosen = {"fast": mine, "balanced": mine, "max": mine}
    write_presets_file(tmp_path / "presets.json", chosen, {"machine": "test machine"})
    presets.forget_presets()
    try:
        assert presets.preset("fast").measured["name"] == "mine"
        assert presets.preset("paper").settings == shipped_paper  # fixed recipes stay
    finally:
        monkeypatch.delenv("EDGECLOAK_HOME")
        presets.forget_presets()


def test_presets_are_read_when_asked_for_not_at_import(tmp_path):
    """Starting the CLI reads no presets file (a damaged local one warns only when a preset is used)."""
    import subprocess
    import sys

    (tmp_path / "presets.json").write_text("{not json")
    code = ("import warnings, edgecloak.presets as p, edgecloak.cli.main\n"
            "assert p._presets_from.cache_info().currsize == 0, 'read at import'\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always'); p.preset('fast')\n"
            "print(len(w), 'ignoring this machine' in str(w[0].message))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "EDGECLOAK_HOME": str(tmp_path)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "True"]


def test_a_preset_gives_its_retries_to_the_policy(monkeypatch, tmp_path):
    import argparse
    import shutil
    from dataclasses import replace

    from edgecloak import presets
    from edgecloak.cli.settings import add_policy_arguments, add_recipe_arguments, add_settings_arguments, recipe_from
    from edgecloak.errors import ModelError
    from edgecloak.recipe import bundle_for, resolve

    # a progressive preset (more retries than the default 1) must reach the policy
    live = load_presets()
    live["fast"] = replace(live["fast"], retries=3)
    monkeypatch.setattr(presets, "load_presets", lambda: dict(live))

    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)
    add_settings_arguments(parser)
    add_policy_arguments(parser)
    for name in live:
        assert recipe_from(parser.parse_args(["--preset", name])).policy.retries == live[name].retries
    assert recipe_from(parser.parse_args([])).preset == DEFAULT_PRESET
    assert recipe_from(parser.parse_args(["--preset", "fast"])).policy.retries == 3
    assert recipe_from(parser.parse_args(["--retries", "2"])).policy.retries == 2
    # a bundle brings the retries of the preset it was exported for (its manifest's recipe), 1 without one
    edge = bundle_for(resolve("edge")).root
    manifest = json.loads((edge / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "edge"
    for recipe, want in (({"name": "fast", "retries": 3}, 3), (None, 1)):
        bundle = tmp_path / f"bundle-{want}"
        bundle.mkdir()
        shutil.copyfile(edge / "preset.json", bundle / "preset.json")
        (bundle / "manifest.json").write_text(json.dumps({**manifest, "recipe": recipe} if recipe else
                                                         {k: v for k, v in manifest.items() if k != "recipe"}))
        assert recipe_from(parser.parse_args(["--bundle", str(bundle)])).policy.retries == want
        assert recipe_from(parser.parse_args(["--bundle", str(bundle), "--retries", "2"])).policy.retries == 2
    with pytest.raises(ModelError, match="not a cloak bundle"):
        recipe_from(parser.parse_args(["--bundle", str(tmp_path / "missing")]))


@pytest.mark.slow
def test_calibrate_presets_quick_runs_the_real_sweep_and_writes_a_report(tmp_path, capsys):
    from edgecloak.cli.main import main

    out = tmp_path / "calib"
    # the three points fan out on two local workers (the mechanism of `edgecloak batch`)
    code = main(["calibrate", "presets", "-o", str(out), "--quick", "--probes", "1", "--workers", "2"])
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["measured"]["fan_out"] == "2 local worker(s)"
    rows = {r["name"]: r for r in calibration["points"]}
    assert set(rows) == {p.name for p in sweep_points(quick=True)}
    for row in rows.values():
        assert row["probes"] == 10 and row["seconds"] > 0 and 0 <= row["unseen_rank1_ut"] <= 1
        assert 0 <= row[OBJECTIVE] <= 1 and set(row["cross_family"]) == {"faceres", "facenet"}
        assert row["white_box_rank1_t"] is not None and row["psnr_face"] > 20
    # the quick points optimise on mobileface alone: each already is its faceres- and facenet-left-out
    # run, and leaving mobileface out leaves nothing, so no extra method is run
    results = json.loads((out / "results.json").read_text())
    assert not [s["method"] for s in results["summary"] if "-without-" in s["method"]]
    assert rows["m-n32-r4"]["settings"]["rescore_every"] == 4 and rows["m-n32-r4"]["baseline"] == "m-n32"
    assert (out / "pareto.png").stat().st_size > 10_000
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "m-n32-r4" in html and "m-n32-r4" in (out / "report.md").read_text()
    # White-box protection with a margin: every point moves mobileface off the true identity for
    # (measured) 10 of 10 probes. Whether a point also clears the preset bars (targeted Rank-1-T
    # >= 0.9) is decided on 10 coarse probes, where one probe is 0.1: measured 0.7 / 0.8 / 0.9 on the
    # larger protocol, a knife edge. So both outcomes are checked for what they must do.
    wb_ut = [r["white_box_rank1_ut"] for r in results["summary"] if r["transform"] == "none" and r["method"] in rows]
    assert len(wb_ut) == 3 and min(wb_ut) >= 0.7, wb_ut
    fair = [r for r in rows.values() if eligible(r)]
    if not fair:  # nothing eligible: nothing chosen, no presets written, a non-zero exit that says so
        assert code != 0 and calibration["chosen"] == {} and not (out / "presets.json").exists()
        assert "presets unchanged" in capsys.readouterr().err
        return
    assert code == 0, capsys.readouterr().err
    written = read_presets(out / "presets.json")
    assert {n: written[n].measured["name"] for n in CHOSEN} == {k: v["name"] for k, v in calibration["chosen"].items()}
    assert all(eligible(written[n].measured) for n in CHOSEN) and "paper" in written
    # fast is the cheapest eligible point, max the most protective one (choose_presets' rule)
    assert written["fast"].measured["name"] == min(fair, key=lambda r: r["seconds"])["name"]
    assert written["max"].measured[OBJECTIVE] == max(r[OBJECTIVE] for r in fair)
