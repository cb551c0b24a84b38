"""The loop-budget report: the protection-vs-latency Pareto plot and the tables behind the presets,
as Markdown and as a self-contained HTML page (the evaluation report's renderers).

Example:
    >>> write_budget_report(json.loads(Path("calib/calibration.json").read_text()), Path("calib"))  # doctest: +SKIP
    PosixPath('calib/report.md')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgecloak.evaluation.metrics import Rate
from edgecloak.evaluation.protocol import FAMILIES
from edgecloak.evaluation.report import _plt, render_html, render_markdown

from .budget import ELIGIBLE, HELD_OUT, OBJECTIVE, eligible, pareto_front

OBJECTIVE_LABEL = "cross-family Rank-1-UT (leave one family out)"

AXIS_COLOURS = {"steps": "tab:blue", "targets": "tab:purple", "diversity": "tab:brown", "mmd": "tab:pink",
                "rescore": "tab:orange", "progressive": "tab:olive", "ensemble": "tab:green", "transfer": "tab:red",
                "quality": "tab:cyan"}


def plotted(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """The rows as plotted: ``OBJECTIVE`` as measured, or, for a row without it (a calibration made
    before the cross-family objective), the unseen (siblings) Rank-1-UT; and whether any row fell back.

    Example:
        >>> rows, fell_back = plotted([{OBJECTIVE: 0.4, "unseen_rank1_ut": 0.6}, {"unseen_rank1_ut": 0.5}])
        >>> [r[OBJECTIVE] for r in rows], fell_back
        ([0.4, 0.5], True)
    """
    out = [r if r.get(OBJECTIVE) is not None else {**r, OBJECTIVE: r.get("unseen_rank1_ut")} for r in rows]
    return [r for r in out if r[OBJECTIVE] is not None], any(r.get(OBJECTIVE) is None for r in rows)


def plot_pareto(rows: Sequence[dict[str, Any]], chosen: dict[str, dict], path: Path) -> bool:
    """Protection (``OBJECTIVE``: cross-family Rank-1-UT) vs seconds per photo, every point, the
    eligible front, the presets. Rows without the objective are plotted on the unseen (siblings)
    Rank-1-UT, and the axis says so."""
    plt = _plt()
    rows, fell_back = plotted(rows)
    chosen = dict(zip(chosen, plotted(list(chosen.values()))[0])) if chosen else {}
    fig, (ax, qx) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    for row in rows:
        ok = eligible(row)
        ax.scatter(row["seconds"], row[OBJECTIVE], s=46, color=AXIS_COLOURS.get(row["axis"], "grey"),
                   marker="o" if ok else "x", zorder=3)
        ax.annotate(row["name"], (row["seconds"], row[OBJECTIVE]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
        if row.get("psnr_face") is not None:  # the quality axis: what people see
            qx.scatter(row["psnr_face"], row[OBJECTIVE], s=46, color=AXIS_COLOURS.get(row["axis"], "grey"),
                       marker="o" if ok else "x", zorder=3)
            qx.annotate(row["name"], (row["psnr_face"], row[OBJECTIVE]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    front = pareto_front([r for r in rows if eligible(r)])
    if front:
        ax.step([r["seconds"] for r in front], [r[OBJECTIVE] for r in front], where="post", color="black",
                lw=1, alpha=0.6, label="Pareto front (eligible points)")
    # presets that share a point (balanced and max, often) get one ring and one label: "balanced, max"
    points: dict[str, tuple[dict, list[str]]] = {}
    for name, row in chosen.items():
        points.setdefault(row["name"], (row, []))[1].append(name)
    for row, names in points.values():
        for axes, x in ((ax, row["seconds"]), (qx, row.get("psnr_face"))):
            if x is None:
                continue
            axes.scatter(x, row[OBJECTIVE], s=220, facecolors="none", edgecolors="red", lw=1.5, zorder=4)
            axes.annotate(", ".join(names), (x, row[OBJECTIVE]), color="red", fontsize=10, weight="bold",
                          xytext=(-10, -16), textcoords="offset points")
    for axis, colour in AXIS_COLOURS.items():
        if any(r["axis"] == axis for r in rows):
            ax.scatter([], [], color=colour, label=axis)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per photo on this machine (log)")
    ax.set_ylabel(OBJECTIVE_LABEL + ("\n(unseen siblings' Rank-1-UT where not measured)" if fell_back else ""))
    ax.set_title("Protection vs latency (x: not eligible as a preset)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    qx.set_xlabel("face PSNR (dB; higher: less visible)")
    qx.set_title("Protection vs what people see")
    qx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _extras(row: dict[str, Any]) -> str:
    s = row["settings"]
    parts = [f"alpha {s.get('alpha', 1.5):g}"]
    if s.get("diversity", "on") is None:
        parts.append("no diversity")
    if s.get("gamma"):
        parts.append(f"MMD {s['gamma']:g}")
    if s.get("rescore_every", 1) > 1:
        parts.append(f"re-score every {s['rescore_every']}")
    if s.get("settle_after"):
        parts.append(f"settle after {s['settle_after']}")
    if row.get("num_targets"):
        parts.append(f"K {row['num_targets']}")
    if s.get("ti_sigma"):
        parts.append(f"TI {s['ti_sigma']:g}")
    if s.get("surrogate_weighting", "equal") != "equal":
        parts.append(f"{s['surrogate_weighting']} weighting")
    if s.get("support", "box") != "box":
        parts.append(f"{s['support']} support")
    if s.get("perceptual"):
        parts.append(f"perceptual {s['perceptual']:g}")
    if s.get("chroma", 1.0) != 1.0:
        parts.append(f"chroma {s['chroma']:g}")
    if row["retries"] != 1:
        parts.append(f"{row['retries']} retries")
    return ", ".join(parts)


def _signed(d: dict[str, Any]) -> str:
    return f"{d['value']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def _difference(row: dict[str, Any], base: dict[str, Any], key: str) -> str:
    if row.get(key) is None or base.get(key) is None:
        return "-"
    return f"{row[key] - base[key]:+.2f}"


def _with_interval(row: dict[str, Any]) -> Any:
    """The objective with its 95% interval over probes where the row has it."""
    rate = row.get("cross_family_rate")
    return Rate.from_dict(rate).interval() if rate else row.get(OBJECTIVE)


def savings_rows(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """What each variant saves against its baseline: latency ratio and protection differences."""
    by_name = {r["name"]: r for r in rows}
    out = []
    for row in rows:
        base = by_name.get(row.get("baseline") or "")
        if base is None:
            continue
        out.append([row["name"], base["name"], f"{row['seconds'] / base['seconds']:.2f}x",
                    f"{(row['steps'] or 0) / max(base['steps'] or 1, 1e-9):.2f}x",
                    _difference(row, base, OBJECTIVE), _difference(row, base, "unseen_rank1_ut"),
                    _difference(row, base, "white_box_rank1_t"),
                    f"{(row['self_check_passed'] or 0) - (base['self_check_passed'] or 0):+.2f}"])
    return out


def budget_blocks(calibration: dict[str, Any], figure: str | None) -> list[tuple]:
    rows, chosen, meta = calibration["points"], calibration["chosen"], calibration["measured"]
    blocks: list[tuple] = [("h", 1, "edgecloak loop-budget calibration")]
    blocks.append(("p", f"Measured on {meta['machine']} with `{meta['command']}`: {meta['probes']} probe photos of "
                        f"{meta['users']} users, 5 real recognizers, the SDK as users run it (runtime "
                        f"{meta['backend']}, self-check with the point's retries; a failing face is kept and "
                        f"scored). Protection = {OBJECTIVE_LABEL}: for each recognizer family "
                        f"({', '.join(f'{f}: ' + ' + '.join(m) for f, m in FAMILIES.items())}) the point is run on "
                        "its surrogates outside the family (the point itself when none of its surrogates is in it; "
                        "a family holding every surrogate is skipped) and scored on the family's members only; a "
                        "probe's value is its mean over the families, the figure the mean over probes (95% "
                        "interval bootstrapped over probes). Secondary: unseen R1-UT (siblings), Rank-1-UT "
                        f"averaged over {', '.join(HELD_OUT)}, siblings of the usual surrogates (same family), so "
                        "it overstates transfer (for a point that optimises on all five it is white-box). A preset "
                        "must keep "
                        + ", ".join(f"{k.replace('_', ' ')} >= {v}" for k, v in ELIGIBLE.items())
                        + " and chase every target (the K 1 point shows what K costs, but presets keep K 10)"
                        + f". Evaluation graphs have K = {meta['eval_targets']} (the other users); presets ship "
                        "K 10, which costs more per step (the K sweep shows how much)."
                        + (f" Points were measured in parallel ({meta['fan_out']}): latency on shared cores."
                           if meta.get("fan_out") else "")))
    if chosen:
        blocks.append(("h", 2, "Presets"))
        blocks.append(("table", ["preset", "point", "s/photo", "cross-family R1-UT", "unseen R1-UT (siblings)",
                                 "white-box R1-T", "self-check", "face PSNR", "unseen R1-UT (siblings) after JPEG 75"],
                       [[name, r["name"], r["seconds"], _with_interval(r), r.get("unseen_rank1_ut"),
                         r["white_box_rank1_t"], r["self_check_passed"], r["psnr_face"], r.get("unseen_rank1_ut_jpeg75")]
                        for name, r in chosen.items()]))
        blocks.append(("p", "fast: the cheapest eligible point; max: the most protective (cross-family R1-UT); "
                            "balanced: the cheapest point of the front with at least 75% of max's protection gain "
                            "over fast. Each is then replaced by its best-looking quality variant (same recipe, "
                            "another budget map: higher face PSNR, at most 20% slower) whose cross-family R1-UT, "
                            "paired over the same probes, is not measurably lower."
                            + "".join(f" {name}: {r['name']} replaces {r['replaces']['point']} (paired difference "
                                      f"{_signed(r['replaces']['cross_family_difference'])})."
                                      for name, r in chosen.items() if r.get("replaces"))))
    else:
        blocks.append(("p", "**No point is eligible**: none keeps the white-box and self-check bars."))
    if figure:
        blocks.append(("img", figure, "Protection against recognizer families left out vs seconds per photo "
                                      "and vs face PSNR"))
    blocks.append(("h", 2, "Every point"))
    blocks.append(("table", ["point", "varies", "surrogates", "N", "settings", "s/photo", "steps/face",
                             "cross-family R1-UT", *(f"without {f}" for f in FAMILIES), "unseen R1-UT (siblings)",
                             *HELD_OUT, "white-box R1-T", "self-check", "face PSNR", "face SSIM", "photo PSNR",
                             "change off the face"],
                   [[r["name"], r["axis"], "+".join(r["surrogates"]), r["settings"]["steps"], _extras(r), r["seconds"],
                     r["steps"], r.get(OBJECTIVE), *((r.get("cross_family") or {}).get(f) for f in FAMILIES),
                     r.get("unseen_rank1_ut"), *((r.get("held_out") or {}).get(e) for e in HELD_OUT),
                     r["white_box_rank1_t"], r["self_check_passed"], r["psnr_face"], r.get("ssim_face"),
                     r.get("psnr_photo"), r.get("outside_face")] for r in rows]))
    savings = savings_rows(rows)
    if savings:
        blocks.append(("h", 2, "What the cheaper variants save and cost"))
        blocks.append(("table", ["variant", "against", "time", "steps", "cross-family R1-UT",
                                 "unseen R1-UT (siblings)", "white-box R1-T", "self-check"], savings))
    return blocks


def write_budget_report(calibration: dict[str, Any], out: Path) -> Path:
    """report.md + report.html (+ pareto.png) into ``out``; returns the Markdown path."""
    out = Path(out)
    figure = "pareto.png" if plot_pareto(calibration["points"], calibration["chosen"], out / "pareto.png") else None
    blocks = budget_blocks(calibration, figure)
    (out / "report.md").write_text(render_markdown(blocks))
    (out / "report.html").write_text(render_html(blocks, out, "edgecloak loop-budget calibration"))
    return out / "report.md"
