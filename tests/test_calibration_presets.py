"""Loop-budget presets: chosen from measured points by a rule, stored as data, used by the SDK and CLI."""

from __future__ import annotations

import json
import os

import pytest

from edgecloak.calibration.budget import (
    ELIGIBLE,
    choose_presets,
    eligible,
    pareto_front,
    sweep_points,
)
from edgecloak.presets import CHOSEN, DEFAULT_PRESET, SHIPPED, load_presets, preset, read_presets

OK = {"white_box_rank1_t": 1.0, "self_check_passed": 1.0}


def _row(name, seconds, unseen, **kw):
    return {"name": name, "seconds": seconds, "unseen_rank1_ut": unseen, **OK, **kw}


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


def test_every_sweep_axis_the_issue_names_is_measured():
    points = sweep_points()
    axes = {p.axis for p in points}
    assert {"steps", "targets", "diversity", "mmd", "rescore", "progressive", "ensemble"} <= axes
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
    assert fast["unseen_rank1_ut"] <= balanced["unseen_rank1_ut"] <= top["unseen_rank1_ut"]
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
        assert row["probes"] == 5 and row["seconds"] > 0 and 0 <= row["unseen_rank1_ut"] <= 1
        assert row["white_box_rank1_t"] is not None and row["psnr_face"] > 20
    assert rows["m-n32-r4"]["settings"]["rescore_every"] == 4 and rows["m-n32-r4"]["baseline"] == "m-n32"
    assert (out / "pareto.png").stat().st_size > 10_000
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "m-n32-r4" in html and "m-n32-r4" in (out / "report.md").read_text()
    # The promise of --quick ("a first look"): it writes presets. N 32 on the one surrogate keeps
    # white-box protection (measured Rank-1-T 1.0 on 15 probes, docs/calibration), so at least one
    # point clears the bars even on 5 coarse probes; a run where none does is a regression, not luck.
    fair = [r for r in rows.values() if eligible(r)]
    assert fair, {name: (r["white_box_rank1_t"], r["self_check_passed"]) for name, r in rows.items()}
    assert all(rows[name]["white_box_rank1_t"] >= ELIGIBLE["white_box_rank1_t"] for name in ("m-n32", "m-n32-r4"))
    assert code == 0, capsys.readouterr().err
    written = read_presets(out / "presets.json")
    assert {n: written[n].measured["name"] for n in CHOSEN} == {k: v["name"] for k, v in calibration["chosen"].items()}
    assert all(eligible(written[n].measured) for n in CHOSEN) and "paper" in written
    # fast is the cheapest eligible point, max the most protective one (choose_presets' rule)
    assert written["fast"].measured["name"] == min(fair, key=lambda r: r["seconds"])["name"]
    assert written["max"].measured["unseen_rank1_ut"] == max(r["unseen_rank1_ut"] for r in fair)
