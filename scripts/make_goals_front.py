"""What the transfer goals would cost: the measured recipes on one picture, with their Pareto front.

Usage (the README's and docs/transfer.md's figure):
    python scripts/make_goals_front.py docs/eval/mirror_ti_eps.json docs/eval/eps_techniques.json \
        docs/eval/smooth_copy.json docs/eval/low_resolution.json docs/eval/feature_term_study.json \
        --white-box docs/eval/white_box_cost.json -o docs/eval/goals_front.png

Reads the cross-family sections of ``edgecloak eval`` results (``--cross-family``, each recipe
paired against the same baseline over the same probes) and, with ``--white-box``, the white-box
rows of an evaluation of the default's full ensemble at several step counts or budgets. Draws,
beside the goals:

* cross-family Rank-1-UT and PSR dodge (mean over the held-out families, 95% interval) against
  face PSNR (the mean over the held-out runs): what the goals cost in what people see. The line
  joins the recipes that no other protects more at as high a face PSNR (the Pareto front);
* white-box Rank-1-T against seconds per photo: what that goal costs in time and budget.

Prints the same numbers as a markdown table. The techniques cost at most a few percent of time
(``scripts/bench_recipes.py``), so the recipes are compared at the default's seconds per photo.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GOAL_TRANSFER = 0.80  # cross-family Rank-1-UT and PSR dodge
GOAL_WHITE_BOX = 0.95  # white-box Rank-1-T

SHORT = {"ti_sigma": "TI", "mirror_probability": "mirror", "smooth_probability": "smooth",
         "resize_probability": "low-res", "eps": "eps", "study": "", "steps": "N"}


def short_name(spec: str, baseline: str) -> str:
    """``balanced+ti_sigma=1+eps=16`` -> ``+ TI 1, eps 16`` (the baseline itself keeps its name).

    Example:
        >>> short_name("balanced+mirror_probability=0.5+ti_sigma=1", "balanced")
        '+ mirror 0.5, TI 1'
    """
    if spec == baseline:
        return baseline
    parts = spec.split("+")[1:]
    words = []
    for part in parts:
        key, _, value = part.partition("=")
        words.append(f"{SHORT.get(key, key)} {value}".strip())
    return "+ " + ", ".join(words)


def cross_family_points(paths: list[Path]) -> list[dict]:
    """One point per recipe (first file wins for a recipe measured twice)."""
    points: dict[str, dict] = {}
    for path in paths:
        data = json.loads(path.read_text())
        specs = list(data["cross_family"])
        for spec, section in data["cross_family"].items():
            if spec in points or section.get("skipped"):
                continue
            runs = [r for r in data["summary"] if r["method"] in section["methods"].values()]
            psnr = [r["psnr_face"] for r in runs if r.get("psnr_face") is not None]
            ssim = [r["ssim_face"] for r in runs if r.get("ssim_face") is not None]
            points[spec] = {
                "recipe": spec, "baseline": specs[0],
                "rank1_ut": section["mean"]["rank1_ut"], "psr_dodge": section["mean"]["psr_dodge_far1e-3"],
                "versus": section.get("versus"),
                "psnr_face": sum(psnr) / len(psnr), "ssim_face": sum(ssim) / len(ssim),
            }
    return list(points.values())


def white_box_points(path: Path) -> list[dict]:
    """The white-box rows (Rank-1-T with its interval, seconds per photo) of a full-ensemble run."""
    data = json.loads(path.read_text())
    out = []
    for row in data["summary"]:
        rate = row.get("white_box_rank1_t_rate")
        if row.get("held_out_family") is None and rate and row.get("transform") == "none":
            out.append({"method": row["method"], "steps": row.get("steps"), "seconds": row["seconds"],
                        "rank1_t": rate, "psnr_face": row["psnr_face"]})
    return out


METRIC_NAMES = {"rank1_ut": "Rank-1-UT", "psr_dodge": "PSR dodge"}
PSNR_TOLERANCE_DB = 0.25  # face PSNRs closer than this are one quality: the loop's techniques move it by ~0.1


def pareto(points: list[dict], key: str) -> list[dict]:
    """The points no other point beats: none protects more (``key``) at a face PSNR as high, within
    ``PSNR_TOLERANCE_DB`` (sorted by PSNR).

    Example:
        >>> pts = [{"recipe": r, "psnr_face": q, "k": {"value": v}} for r, q, v in
        ...        [("a", 28.6, 0.53), ("b", 28.5, 0.58), ("c", 26.3, 0.63), ("d", 26.0, 0.60)]]
        >>> [p["recipe"] for p in pareto(pts, "k")]
        ['c', 'b']
    """
    front = [p for p in points
             if not any(q[key]["value"] > p[key]["value"] and q["psnr_face"] >= p["psnr_face"] - PSNR_TOLERANCE_DB
                        for q in points)]
    return sorted(front, key=lambda p: p["psnr_face"])


def interval(rate: dict, sign: str = "") -> str:
    """``0.53 [0.43, 0.63]`` (``sign="+"``: ``+0.05 [+0.00, +0.11]``, for differences)."""
    return f"{rate['value']:{sign}.2f} [{rate['low']:{sign}.2f}, {rate['high']:{sign}.2f}]"


def error_bar(rate: dict) -> list[list[float]]:
    """matplotlib's ``yerr`` of a rate with its interval."""
    return [[rate["value"] - rate["low"]], [rate["high"] - rate["value"]]]


def table(points: list[dict]) -> str:
    lines = ["| recipe | cross-family Rank-1-UT | PSR dodge @FAR 1e-3 | Rank-1-UT vs baseline | face PSNR / SSIM | "
             "on the front of |",
             "|---|---|---|---|---|---|"]
    on = {key: {p["recipe"] for p in pareto(points, key)} for key in ("rank1_ut", "psr_dodge")}
    for p in sorted(points, key=lambda p: -p["psnr_face"]):
        diff = interval(p["versus"]["rank1_ut"], "+") if p.get("versus") else ""
        lines.append(f"| {p['recipe']} | {interval(p['rank1_ut'])} | {interval(p['psr_dodge'])} | {diff} | "
                     f"{p['psnr_face']:.1f} / {p['ssim_face']:.2f} | "
                     f"{', '.join(METRIC_NAMES[k] for k, names in on.items() if p['recipe'] in names)} |")
    return "\n".join(lines)


def draw(points: list[dict], white_box: list[dict], out: Path) -> None:
    panels = 3 if white_box else 2
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 5.2))
    titles = {"rank1_ut": "cross-family Rank-1-UT", "psr_dodge": "cross-family PSR dodge @FAR 1e-3"}
    baseline = points[0]["baseline"]
    for ax, key in zip(axes, ("rank1_ut", "psr_dodge")):
        front = pareto(points, key)
        named = {p["recipe"] for p in front} | {baseline}
        for p in points:
            rate = p[key]
            default = p["recipe"] == baseline
            # only the front and the baseline are named: the rest crowd the default's PSNR (the table has them)
            color = "tab:red" if default else "tab:blue" if p["recipe"] in named else "silver"
            ax.errorbar(p["psnr_face"], rate["value"], yerr=error_bar(rate),
                        fmt="o", color=color, ms=7 if default else 5, capsize=3, alpha=0.85)
            if p["recipe"] in named:
                ax.annotate(short_name(p["recipe"], baseline), (p["psnr_face"], rate["value"]), fontsize=8,
                            xytext=(6, -3 if default else 4), textcoords="offset points")
        ax.plot([p["psnr_face"] for p in front], [p[key]["value"] for p in front], "-", color="grey", lw=1,
                label="Pareto front (nothing measured protects more at as high a PSNR)")
        ax.axhline(GOAL_TRANSFER, ls="--", color="tab:green", label=f"goal {GOAL_TRANSFER:.2f}")
        ax.set_xlabel("face PSNR (dB; higher: less visible)")
        ax.set_ylabel(f"{titles[key]} (mean of 3 families, 95%)")
        ax.set_title(f"{titles[key]} vs what people see")
        ax.invert_xaxis()  # left to right: more visible, more protection
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if white_box:
        ax = axes[2]
        for i, p in enumerate(white_box):
            rate = p["rank1_t"]
            ax.errorbar(p["seconds"], rate["value"], yerr=error_bar(rate),
                        fmt="o", color="tab:purple", capsize=3)
            # points of equal Rank-1-T and seconds (another budget) get their labels one under another
            ax.annotate(f"{p['method']}: N {int(p['steps'])}, face {p['psnr_face']:.1f} dB", (p["seconds"], rate["value"]),
                        fontsize=8, xytext=(6, 4 - 12 * i), textcoords="offset points")
        ax.axhline(GOAL_WHITE_BOX, ls="--", color="tab:green", label=f"goal {GOAL_WHITE_BOX:.2f}")
        ax.set_xlabel("seconds per photo (this machine)")
        ax.set_ylabel("white-box Rank-1-T (95%)")
        ax.set_title("white-box Rank-1-T vs time and budget (3 surrogates)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="eval results with a cross_family section")
    parser.add_argument("--white-box", type=Path, default=None, help="eval results of the default's full ensemble at several N or eps")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/eval/goals_front.png"))
    args = parser.parse_args(argv)
    points = cross_family_points(args.results)
    white_box = white_box_points(args.white_box) if args.white_box else []
    draw(points, white_box, args.out)
    print(table(points))
    for p in white_box:
        print(f"white-box Rank-1-T {p['method']} (N {int(p['steps'])}): {interval(p['rank1_t'])} at {p['seconds']:.2f} s/photo")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
