"""The evaluation report: plots (PNG) and one document, written both as Markdown and as a
self-contained HTML page (figures embedded), from ``results.json`` alone.

The document is built once as a list of blocks (heading, paragraph, table, figure) and rendered
twice, so both formats always say the same. matplotlib is imported here only (the ``eval`` extra).

Example:
    >>> import json; write_report(json.loads(Path("eval-out/results.json").read_text()), Path("eval-out"))  # doctest: +SKIP
    PosixPath('eval-out/report.md')
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from edgecloak.runtime.face_region import grown_box as face_region
from edgecloak.runtime.image_io import load_image

from .metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, Rate, dssim, psr_keys

# the project's goals, reported against (not asserted)
GOALS = {"white_box_rank1_t": 0.95, "black_box_rank1_ut": 0.80, "psnr_face": 30.0}
GOAL_NAMES = {"white_box_rank1_t": "white-box Rank-1-T", "black_box_rank1_ut": "black-box Rank-1-UT",
              "psnr_face": "face PSNR (dB)"}
DEFAULT_PRESET_METHOD = "balanced"  # `edgecloak protect`'s default
LABELS = {
    "none": "no protection", "noise": "uniform noise (eps 12)", "blur": "Gaussian blur (sigma 3)",
    "mifgsm": "MI-FGSM dodging (untargeted)",
    "tipim-published": "TIP-IM as published (N 50, no diversity, last iterate)",
    "edge": "edge preset", "paper": "paper preset", "fast": "fast preset", "balanced": "balanced preset (default)",
    "max": "max preset",
}


# ----------------------------------------------------------------------------------------------
# blocks and renderers
def _cell(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_markdown(blocks: Sequence[tuple]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out.append(f"{'#' * block[1]} {block[2]}\n")
        elif kind == "p":
            out.append(block[1] + "\n")
        elif kind == "table":
            headers, rows = block[1], block[2]
            out.append("| " + " | ".join(headers) + " |")
            out.append("|" + "---|" * len(headers))
            out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n\n*{block[2]}*\n")
    return "\n".join(out)


def render_html(blocks: Sequence[tuple], root: Path, title: str = "edgecloak evaluation") -> str:
    body = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((root / block[1]).read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block[2])}">'
                        f"<figcaption>{html.escape(block[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th{background:#f3f3f3}img{max-width:100%}figcaption{color:#555;font-size:90%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


# ----------------------------------------------------------------------------------------------
# tables
def _summary(results: dict, method: str, transform: str = "none") -> dict | None:
    return next((s for s in results["summary"] if s["method"] == method and s["transform"] == transform), None)


def headline_rows(results: dict) -> list[list[Any]]:
    """One row per main method (clean upload): the README's table."""
    rows = []
    for s in results["summary"]:
        if s["transform"] != "none" or s["family"] in ("sweep", "cross-family"):
            continue
        rows.append([
            LABELS.get(s["method"], s["method"]), "+".join(s["surrogates"]) or "-",
            s["white_box_rank1_ut"], s["white_box_rank1_t"], s["black_box_rank1_ut"], s["black_box_rank1_t"],
            s["black_box_dodged"], s["psnr_face"], s["ssim_face"], dssim(s["ssim_face"]), s["psnr_photo"],
            s.get("outside_face"), s["seconds"],
        ])
    return rows


HEADLINE_HEADERS = ["method", "surrogates", "white-box R1-UT", "white-box R1-T", "black-box R1-UT",
                    "black-box R1-T", "black-box dodged", "PSNR face (dB)", "SSIM face", "DSSIM face", "PSNR photo (dB)",
                    "change off the face", "s/photo"]


def _rate_keys(results: dict) -> list[tuple[str, str]]:
    """(metric key, column name) of the rates with intervals; empty for results written before them."""
    far_strict = results["settings"].get("far_strict")
    if far_strict is None:
        return []
    dodge, target = psr_keys(far_strict)
    return [("rank1_ut", "R1-UT"), ("rank1_t", "R1-T"), (dodge, f"PSR dodge @FAR {far_strict:g}"),
            (target, f"PSR target @FAR {far_strict:g}")]


def _rate_text(d: dict | None) -> str:
    """A ``Rate`` dict as "value [low, high]", or "-" where there is none."""
    return "-" if d is None else Rate.from_dict(d).interval()


def _rate_cell(summary: dict, key: str) -> str:
    return _rate_text(summary.get(f"{key}_rate"))


def interval_rows(results: dict) -> tuple[list[str], list[list[Any]]]:
    """The protection rates with 95% intervals, one row per main method (clean upload): headers, rows."""
    keys = _rate_keys(results)
    headers = ["method", *(f"{side} {name}" for side in ("white-box", "black-box") for _, name in keys)]
    rows = []
    for s in results["summary"]:
        if s["transform"] != "none" or s["family"] in ("sweep", "cross-family") or not keys:
            continue
        rows.append([LABELS.get(s["method"], s["method"]),
                     *(_rate_cell(s, f"{side}_{k}") for side in ("white_box", "black_box") for k, _ in keys)])
    return headers, rows


def interval_caption(results: dict) -> str:
    """The intervals table's caption: n once, how the intervals and the PSR thresholds are made."""
    ns = sorted({d["n"] for s in results["summary"] for k, d in s.items() if k.endswith("_rate") and d})
    proto = results["protocol"]
    pairs = proto.get("impostor_pairs") or {}
    resolved = proto.get("far_strict_resolved") or {}
    n_pairs = (f"{min(pairs.values())}" if len(set(pairs.values())) == 1 else
               ", ".join(f"{e} {n}" for e, n in pairs.items())) if pairs else "?"
    unresolved = [e for e, ok in resolved.items() if not ok]
    return (f"Value [{CONFIDENCE:.0%} interval], n = {', '.join(map(str, ns)) or '?'} probes per cell: percentile "
            f"bootstrap over probes ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}; each probe with all its "
            "recognizers' outcomes, a white-box or black-box value being the mean over those recognizers), the "
            "Wilson interval where every probe "
            f"has the same outcome. PSR at each recognizer's threshold at FAR {proto.get('far_strict', 0):g} on "
            f"{n_pairs} clean impostor pairs"
            + (f" (too few to resolve it for {', '.join(unresolved)}: the threshold is the highest impostor score)"
               if unresolved else "")
            + ": dodge = the probe's maximum cosine over its user's gallery photos is at or below the threshold; "
              "target = its maximum cosine over the target identities' gallery photos is above it.")


def cross_family_rows(results: dict, preset: str) -> tuple[list[str], list[list[Any]]]:
    """Leave-one-family-out transfer of one preset: one row per held-out family (optimised on the
    surrogates outside it, scored on its members only) and the mean over families; headers, rows."""
    section = results["cross_family"][preset]
    dodge = section["metrics"][1]
    far_strict = results["settings"].get("far_strict", 1e-3)
    headers = ["held-out family", "optimised on", "scored on", "Rank-1-UT", f"PSR dodge @FAR {far_strict:g}", "n"]

    def cells(rates: dict) -> list[Any]:
        r1, psr = rates.get("rank1_ut"), rates.get(dodge)
        n = next((d["n"] for d in (r1, psr) if d), None)
        return [_rate_text(r1), _rate_text(psr), n]

    rows = [[family, "+".join(section["surrogates"][family]), ", ".join(section["scored_on"][family]), *cells(rates)]
            for family, rates in section["matrix"].items()]
    if rows:
        rows.append(["mean over families", "-", "-", *cells(section["mean"])])
    return headers, rows


def cross_family_caption(results: dict, preset: str) -> str:
    section = results["cross_family"][preset]
    skipped = section.get("skipped") or []
    return (f"{preset}: for each recognizer family, the preset re-optimised on its surrogates outside the family "
            "and scored on that family's recognizers only (clean upload), so no recognizer of the family it is "
            "scored on was seen, not even a sibling. Value [95% interval] bootstrapped over probes (a probe's "
            "value: the mean over the family's recognizers); the mean over families takes each probe's mean over "
            "the families it was scored in."
            + (f" Not scored: {', '.join(skipped)} (no surrogate left without it, or none of its recognizers "
               "among the evaluators)." if skipped else ""))


def recipe_comparison_rows(results: dict) -> tuple[list[str], list[list[Any]]]:
    """Every recipe judged by leave-one-family-out, side by side: its mean over families, the
    difference to the first recipe paired over probes (value [95% interval]), and its cost (seconds
    per photo, the mean over its held-out runs). Empty when fewer than two recipes were judged."""
    sections = results.get("cross_family") or {}
    if len(sections) < 2:
        return [], []
    first = next(iter(sections))
    far_strict = results["settings"].get("far_strict", 1e-3)
    headers = ["recipe", "cross-family Rank-1-UT", f"PSR dodge @FAR {far_strict:g}",
               f"Rank-1-UT vs {first}", "PSR dodge vs", "s/photo", "n"]
    seconds = {s["method"]: s["seconds"] for s in results["summary"] if s["transform"] == "none"}

    def delta(d: dict | None) -> str:
        return "-" if d is None else f"{d['value']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"

    rows = []
    for spec, section in sections.items():
        r1_key, dodge_key = section["metrics"]
        versus = section.get("versus") or {}
        cost = [seconds[m] for m in section["methods"].values() if seconds.get(m) is not None]
        n = next((d["n"] for d in section["mean"].values() if d), None)
        rows.append([spec, _rate_text(section["mean"][r1_key]), _rate_text(section["mean"][dodge_key]),
                     "(reference)" if spec == first else delta(versus.get(r1_key)),
                     "" if spec == first else delta(versus.get(dodge_key)),
                     f"{np.mean(cost):.2f}" if cost else "-", n])
    return headers, rows


RECIPE_COMPARISON_CAPTION = (
    "Each recipe's mean over the held-out families, and its difference to the first recipe paired over the "
    "same probes (mean difference [95% bootstrap interval]): a difference whose interval holds 0 is inside the "
    "noise. s/photo: the mean over the recipe's held-out runs (each on its surrogates outside one family), "
    "on this run's machine.")


def headline_markdown(results: dict) -> str:
    """The headline table, as Markdown (pasted into the README), then the protection rates with
    their 95% intervals and that table's caption (results written before the intervals: the
    headline table alone), then each cross-family table where the results have one."""
    text = render_markdown([("table", HEADLINE_HEADERS, headline_rows(results))])
    headers, rows = interval_rows(results)
    if rows:
        text += "\n" + render_markdown([("table", headers, rows), ("p", interval_caption(results))])
    for preset in results.get("cross_family") or {}:
        headers, rows = cross_family_rows(results, preset)
        text += "\n" + render_markdown([("p", f"Cross-family transfer (leave one family out): {preset}"),
                                        ("table", headers, rows), ("p", cross_family_caption(results, preset))])
    headers, rows = recipe_comparison_rows(results)
    if rows:
        text += "\n" + render_markdown([("p", "Recipes compared by cross-family transfer"), ("table", headers, rows),
                                        ("p", RECIPE_COMPARISON_CAPTION)])
    return text


def _goal_lines(results: dict) -> list[str]:
    lines = []
    for method in dict.fromkeys((DEFAULT_PRESET_METHOD, "paper", "edge", "tipim-published")):
        s = _summary(results, method)
        if s is None:
            continue
        checks = []
        for key, bar in GOALS.items():
            v = s.get(key)
            verdict = "not measured" if v is None else ("met" if v >= bar else "NOT met")
            checks.append(f"{GOAL_NAMES[key]} {_cell(v)} (goal {bar:g}): {verdict}")
        lines.append(f"{LABELS.get(method, method)}: " + "; ".join(checks) + ".")
    return lines


# ----------------------------------------------------------------------------------------------
# figures
def _plt():
    import matplotlib  # optional: the eval extra's, imported only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # optional: as above; after use("Agg"), so no display is needed

    return plt


def _sweep_points(results: dict, axis: str) -> list[tuple[float, dict]]:
    points = [(s["sweep"][1], s) for s in results["summary"]
              if s["transform"] == "none" and s["sweep"] and s["sweep"][0] == axis]
    edge = _summary(results, "edge")
    if edge is not None:  # the preset itself is the sweep's centre point
        points.append((float(edge["settings"]["config"].get(axis, 12.0 if axis == "eps" else 0)), edge))
    return sorted(points, key=lambda p: p[0])


def _plot_sweep(results: dict, axis: str, path: Path, xlabel: str) -> bool:
    points = _sweep_points(results, axis)
    if len(points) < 2:
        return False
    plt = _plt()
    xs = [p[0] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, style in (("white_box_rank1_ut", "white-box Rank-1-UT", "o-"),
                              ("white_box_rank1_t", "white-box Rank-1-T", "s-"),
                              ("black_box_rank1_ut", "black-box Rank-1-UT", "o--"),
                              ("black_box_dodged", "black-box dodged @FAR", "^--")):
        ax.plot(xs, [p[1][key] for p in points], style, label=label)
    if axis == "eps":
        ax2 = ax.twinx()
        ax2.plot(xs, [p[1]["psnr_face"] for p in points], "k:", label="PSNR face")
        ax2.set_ylabel("PSNR face (dB)")
    else:
        for x, s in points:
            ax.annotate(f"{s['seconds']:.1f}s", (x, s["white_box_rank1_t"]), textcoords="offset points",
                        xytext=(0, 6), fontsize=7, ha="center")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of probes")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"edge preset: protection vs {axis}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_quality(results: dict, path: Path) -> bool:
    points = [s for s in results["summary"] if s["transform"] == "none" and s["psnr_face"] is not None]
    if not points:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s in points:
        colour = {"baseline": "tab:gray", "tipim": "tab:blue", "sweep": "tab:cyan"}.get(s["family"], "tab:purple")
        ax.scatter(s["psnr_face"], s["black_box_rank1_ut"], color=colour, marker="o")
        if s["white_box_rank1_t"] is not None:
            ax.scatter(s["psnr_face"], s["white_box_rank1_t"], color=colour, marker="x")
        # sweep points get short labels (N8, eps8): they crowd around the edge preset
        label = f"{'N' if s['sweep'][0] == 'steps' else 'eps'}{s['sweep'][1]:g}" if s["sweep"] else s["method"]
        ax.annotate(label, (s["psnr_face"], s["black_box_rank1_ut"]), textcoords="offset points",
                    xytext=(4, -9 if s["sweep"] else 3), fontsize=6 if s["sweep"] else 7)
    ax.axvline(GOALS["psnr_face"], color="k", ls=":", lw=1)
    ax.set_xlabel("PSNR of the face crop (dB), higher = less visible")
    ax.set_ylabel("o black-box Rank-1-UT    x white-box Rank-1-T")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title("protection vs image quality")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_robustness(results: dict, path: Path) -> bool:
    methods = [m for m in ("none", "noise", "blur", "mifgsm", "tipim-published", "edge", "paper", "balanced")
               if _summary(results, m) is not None]
    transforms = list(dict.fromkeys(s["transform"] for s in results["summary"] if s["method"] in methods))
    if len(transforms) < 2 or not methods:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.8 / len(methods)
    for ax, key, title in ((axes[0], "black_box_rank1_ut", "black-box Rank-1-UT"),
                           (axes[1], "white_box_rank1_t", "white-box Rank-1-T")):
        for i, m in enumerate(methods):
            vals = [(_summary(results, m, t) or {}).get(key) for t in transforms]
            ax.bar(np.arange(len(transforms)) + i * width, [v if v is not None else 0 for v in vals], width, label=m)
        ax.set_xticks(np.arange(len(transforms)) + width * (len(methods) - 1) / 2, transforms, fontsize=8)
        ax.set_title(f"{title} after upload transforms")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("fraction of probes")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def difference_x10(original: np.ndarray, protected: np.ndarray) -> np.ndarray:
    """The mask made visible: 128 + 10 x (protected - original), uint8 (grey: no change).

    Example:
        >>> difference_x10(np.full((1, 1, 3), 100, np.uint8), np.full((1, 1, 3), 103, np.uint8)).ravel().tolist()
        [158, 158, 158]
    """
    return np.clip(128 + 10 * (protected.astype(np.int16) - original.astype(np.int16)), 0, 255).astype(np.uint8)


def _face_crop(image: np.ndarray, box: Sequence[float], size: int = 160) -> np.ndarray:
    x0, y0, x1, y1 = face_region(box, image.shape, margin=0.15)
    return cv2.resize(image[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


def _plot_grid(results: dict, path: Path, root: Path, rows: int = 4) -> bool:
    """Real faces: original, protected and difference x10 for the TIP-IM presets."""
    records = results["records"]
    shown = [m for m in ("edge", "paper", "balanced", "tipim-published") if m in records]
    if not shown or "none" not in records:
        return False
    plt = _plt()
    picks = list(range(len(records["none"])))[:: max(1, len(records["none"]) // rows)][:rows]
    cols = 1 + 2 * len(shown)
    fig, axes = plt.subplots(len(picks), cols, figsize=(1.9 * cols, 1.95 * len(picks)), squeeze=False)
    for r, i in enumerate(picks):
        original = load_image(root / records["none"][i]["image_path"])
        box = results["protocol"]["probes"][i]["box"]
        panels = [(_face_crop(original, box), "original")]
        for m in shown:
            protected = load_image(root / records[m][i]["image_path"])
            diff = difference_x10(original, protected)
            panels += [(_face_crop(protected, box), f"{m}"), (_face_crop(diff, box), f"{m} diff x10")]
        for c, (img, title) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------
def _backends_line(results: dict) -> str:
    """Which engine produced which method's photos, grouped (the long 'skipped ...' reasons dropped)."""
    by_engine: dict[str, list[str]] = {}
    for method, engines in results["backends"].items():
        for engine in engines:
            by_engine.setdefault(engine.split(" (")[0], []).append(method)
    return "; ".join(f"{engine} for {', '.join(methods)}" for engine, methods in by_engine.items()) or "no engine"


def protocol_description(results: dict) -> str:
    """The protocol in two sentences, from the results: the probes (of how many users) and what the
    gallery holds. Results written before the gallery-only identities (no ``distractors`` setting)
    had none.

    Example:
        >>> proto = {"probes": [{}] * 40, "users": [f"u{i}" for i in range(10)], "gallery_faces": 764,
        ...          "gallery_identities": [*(f"u{i}" for i in range(10)), *(f"one-{i}" for i in range(10)),
        ...                                 "barack_obama", *(f"portrait-{i:03d}" for i in range(609))],
        ...          "optimisation_photos": {f"u{i}": [] for i in range(10)}}
        >>> settings = {"probes_per_identity": 4, "targets_per_identity": 3, "distractors": True}
        >>> print(protocol_description({"protocol": proto, "settings": settings}))  # doctest: +NORMALIZE_WHITESPACE
        40 probe photos of 10 users (4 each). Gallery: 764 faces of 630 identities: the users' other photos,
        the 10 one-photo faces and 612 gallery-only faces (3 photos of one more person and 609 one-photo
        portraits); the 3 optimisation photos per user are in no gallery.
    """
    settings, proto = results["settings"], results["protocol"]
    users, identities = proto["users"], proto["gallery_identities"]
    everyone = proto.get("optimisation_photos") or {u: None for u in users}  # every user is split
    probed = f"{len(users)} users" if len(users) == len(everyone) else f"{len(users)} of the {len(everyone)} users"
    if settings.get("distractors", False):
        portraits = sum(str(n).startswith("portrait-") for n in identities)
        extra = 3 if "barack_obama" in identities else 0
        gallery_only = (f" and {extra + portraits} gallery-only faces ("
                        + (f"{extra} photos of one more person and " if extra else "")
                        + f"{portraits} one-photo portraits)")
    else:
        gallery_only = " (no gallery-only faces" + (": --no-distractors)" if "distractors" in settings else ")")
    return (f"{len(proto['probes'])} probe photos of {probed} ({settings['probes_per_identity']} each). "
            f"Gallery: {proto['gallery_faces']} faces of {len(identities)} identities: the users' other photos, "
            f"the 10 one-photo faces{gallery_only}; the {settings['targets_per_identity']} optimisation photos "
            "per user are in no gallery.")


def report_blocks(results: dict, figures: dict[str, str]) -> list[tuple]:
    settings, proto, versions = results["settings"], results["protocol"], results["versions"]
    blocks: list[tuple] = [
        ("h", 1, "edgecloak: measured protection"),
        ("p", f"{protocol_description(results)} "
              f"Evaluators: {', '.join(settings['evaluators'])}; white-box = the method's own surrogates, "
              f"black-box = all others (mean over them). Seed {settings['seed']}, backend {settings['backend']}: "
              f"{_backends_line(results)}."),
        ("p", "Rank-1-UT: the true identity is not ranked first; Rank-1-T: a target identity (another user) is "
              "ranked first; dodged: the probe's best similarity to its own gallery photos is at or below the "
              f"recognizer's threshold at FAR {proto['far']:g} on clean impostor pairs. With "
              f"{max(len(proto.get('optimisation_photos') or proto['users']) - 1, 0)} other users in the "
              "gallery, a probe pushed off its identity often lands on one of them, so untargeted rows score "
              "Rank-T too; compare the targeted rows with MI-FGSM."),
        ("h", 2, "Headline (lossless upload)"),
        ("table", HEADLINE_HEADERS, headline_rows(results)),
        ("p", "Quality is measured on the detected face's box (face) and the whole photo: PSNR, SSIM and DSSIM "
              "((1 - SSIM) / 2, the budget measure Fawkes reports). Change off the face: the share of the "
              "mask's total change (sum of absolute pixel changes) outside the face's ellipse (forehead to "
              "chin, placed by the landmarks), where it buys no protection and shows on the background."),
    ]
    headers, rows = interval_rows(results)
    if rows:
        blocks += [("h", 3, "Protection rates with 95% intervals (lossless upload)"), ("table", headers, rows),
                   ("p", interval_caption(results))]
    for preset in results.get("cross_family") or {}:
        headers, rows = cross_family_rows(results, preset)
        blocks += [("h", 3, f"Cross-family transfer (leave one family out): {preset}"),
                   ("table", headers, rows), ("p", cross_family_caption(results, preset))]
    headers, rows = recipe_comparison_rows(results)
    if rows:
        blocks += [("h", 3, "Recipes compared by cross-family transfer"), ("table", headers, rows),
                   ("p", RECIPE_COMPARISON_CAPTION)]
    goals = _goal_lines(results)
    if goals:
        blocks += [("h", 3, "Against the goals (white-box Rank-1-T >= 0.95, black-box Rank-1-UT >= 0.80, "
                            "face PSNR >= 30 dB)")] + [("p", g) for g in goals]
    evaluators = settings["evaluators"]
    psr = [k for k, _ in _rate_keys(results)][2:]  # the two PSRs, where the results have them
    per_eval = []
    for s in results["summary"]:
        if s["transform"] != "none" or s["family"] == "sweep":
            continue
        row = [s["method"]]
        for e in evaluators:
            r = next((x for x in results["rows"] if x["method"] == s["method"] and x["transform"] == "none"
                      and x["evaluator"] == e), None)
            mark = "*" if r and r["white_box"] else ""
            extra = "".join(f" / {r[k]:.2f}" for k in psr if r is not None and k in r)
            row.append("-" if r is None
                       else f"{r['rank1_ut']:.2f} / {r['rank1_t']:.2f} / {r['dodged']:.2f}{extra}{mark}")
        per_eval.append(row)
    psr_names = (f" @FAR {results['protocol']['far']:g} / PSR dodge / PSR target @FAR {settings['far_strict']:g}"
                 if psr else "")
    blocks += [("h", 2, f"Per recognizer (R1-UT / R1-T / dodged{psr_names}; * white-box)"),
               ("table", ["method", *evaluators], per_eval)]
    transforms = list(dict.fromkeys(s["transform"] for s in results["summary"] if s["family"] != "sweep"))
    robust = []
    for m in dict.fromkeys(s["method"] for s in results["summary"] if s["family"] != "sweep"):
        row = [m]
        for t in transforms:
            s = _summary(results, m, t)
            row.append("-" if s is None else f"{_cell(s['black_box_rank1_ut'])} / {_cell(s['white_box_rank1_t'])}")
        robust.append(row)
    blocks += [("h", 2, "After upload transforms (black-box R1-UT / white-box R1-T)"),
               ("table", ["method", *transforms], robust)]
    sweeps = [s for s in results["summary"] if s["family"] == "sweep" or s["method"] == "edge"]
    if len(sweeps) > 1:
        blocks += [("h", 2, "Edge preset sweeps"), ("table", ["method", "white-box R1-UT", "white-box R1-T",
                   "black-box R1-UT", "PSNR face", "s/photo"],
                   [[s["method"], s["white_box_rank1_ut"], s["white_box_rank1_t"], s["black_box_rank1_ut"],
                     s["psnr_face"], s["seconds"]] for s in sweeps if s["transform"] == "none"])]
    captions = {
        "grid": "Real faces: original, protected, and the difference x10 (mid-grey = unchanged)",
        "iterations": "Protection vs iterations (edge preset, eps 12; labels: seconds per photo)",
        "eps": "Protection vs the L_inf budget eps (edge preset, 16 steps) and the face PSNR it costs",
        "quality": "Protection vs image quality, every method and sweep point",
        "robustness": "Protection after what uploads do to photos",
    }
    if figures:
        blocks.append(("h", 2, "Figures"))
        blocks += [("img", figures[k], captions[k]) for k in captions if k in figures]
    blocks += [
        ("h", 2, "Notes"),
        ("p", "Perceptual metrics: PSNR and SSIM only. LPIPS needs its AlexNet/VGG backbone and linear heads, "
              "which ship in no package on the registries this project fetches from (PyPI, npm, Debian), so it "
              "is not computed."),
        ("p", f"Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}. "
              f"Run time {results['seconds'] / 60:.1f} min; embeddings computed {results['embeddings_computed']} "
              "(the rest read from the cache)."),
    ]
    return blocks


def write_report(results: dict, out: Path) -> Path:
    """Figures under ``out/figures``, ``out/report.md`` and ``out/report.html``; returns the .md path."""
    out = Path(out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = {}
    for key, draw in (("grid", lambda r, p: _plot_grid(r, p, out)), ("iterations", lambda r, p: _plot_sweep(r, "steps", p, "iterations N")),
                      ("eps", lambda r, p: _plot_sweep(r, "eps", p, "eps (0..255)")),
                      ("quality", _plot_quality), ("robustness", _plot_robustness)):
        path = fig_dir / f"{key}.png"
        if draw(results, path):
            figures[key] = f"figures/{key}.png"
    blocks = report_blocks(results, figures)
    (out / "report.md").write_text(render_markdown(blocks))
    (out / "report.html").write_text(render_html(blocks, out))
    return out / "report.md"
