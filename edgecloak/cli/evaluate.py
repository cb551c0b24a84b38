"""``edgecloak eval``: measured protection (white/black-box ranks, dodging, quality, robustness).

Example:
    $ edgecloak eval -o eval-out/ --quick          # ~2 min: 10 probes, 3 methods, 2 recognizers
    $ edgecloak eval -o eval-out/                  # the full protocol (README table)
    $ edgecloak eval -o eval-out/ --methods tipim-published --no-sweeps --backend onnxruntime   # one row
    $ edgecloak eval -o eval-out/ --cross-family balanced   # + leave-one-family-out transfer of a preset
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgecloak.errors import UsageError
from edgecloak.runtime.backends import BACKENDS

from .settings import add_fan_out_arguments, fan_out_from

QUICK = {"probes_per_identity": 1, "methods": ["none", "noise", "edge"], "evaluators": ["mobileface", "faceres-deep"],
         "transforms": ["none", "jpeg75"], "sweeps": False}


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


class EvalCommand:
    """Protect the probe photos of the 5 users with every method (baselines, TIP-IM as published,
    the presets; every TIP-IM method on the runtime), apply upload transforms, and score them with
    white-box and black-box recognizers against a gallery. Writes results.json, report.md,
    report.html and figures/ into the output folder; resumable (protected photos and embeddings are
    cached)."""

    @staticmethod
    def register(sub: argparse._SubParsersAction) -> None:
        # optional: evaluation code stays out of a device's `import edgecloak.cli.main`; these two are torch-free
        from edgecloak.evaluation.protocol import DEFAULT_EVALUATORS, MAIN_METHODS
        from edgecloak.evaluation.transforms import UPLOAD_TRANSFORMS

        p = sub.add_parser("eval", help="measure protection and image quality", description=EvalCommand.__doc__)
        p.add_argument("-o", "--out", type=Path, required=True, help="output folder (results, report, protected photos)")
        p.add_argument("--quick", action="store_true",
                       help="a small run: 1 probe per user, none/noise/edge, mobileface + faceres-deep, none/jpeg75")
        p.add_argument("--probes", type=int, default=None, help="probe photos per user (default 4: 40 probes)")
        p.add_argument("--identities", type=_names, default=None, help="comma-separated users to probe (default: all 10)")
        p.add_argument("--no-distractors", action="store_true",
                       help="leave the 612 gallery-only faces out (a smaller gallery; FAR 1e-3 is then not resolved)")
        p.add_argument("--methods", type=_names, default=None, help=f"comma-separated, from {','.join(MAIN_METHODS)}")
        p.add_argument("--evaluators", type=_names, default=None,
                       help=f"comma-separated recognizers (default {','.join(DEFAULT_EVALUATORS)})")
        p.add_argument("--transforms", type=_names, default=None, help=f"comma-separated, from {','.join(UPLOAD_TRANSFORMS)}")
        p.add_argument("--no-sweeps", action="store_true", help="skip the edge preset's iteration and eps sweeps")
        p.add_argument("--bundle", action="append", default=[], metavar="NAME=PATH",
                       help="also evaluate an exported bundle (its surrogates and preset), repeatable")
        p.add_argument("--cross-family", action="append", type=_names, default=[], metavar="PRESET",
                       help="also judge a preset by leave-one-family-out transfer: per recognizer family, optimise "
                            "on its surrogates outside the family, score on the family only (clean upload); "
                            "PRESET+KEY=VALUE+... judges the preset with other settings "
                            "(balanced+ti_sigma=1); repeatable or comma-separated")
        p.add_argument("--seed", type=int, default=0, help="seed of every method's random stream")
        p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                       help=f"runtime backend of every TIP-IM method: auto, {', '.join(BACKENDS)} (default auto)")
        p.add_argument("--far", type=float, default=0.01, help="false-accept rate of the dodging threshold")
        p.add_argument("--cache", type=Path, default=None, help="embedding cache (default $EDGECLOAK_HOME/eval-cache)")
        p.add_argument("--report-only", action="store_true", help="rewrite the report from OUT/results.json")
        add_fan_out_arguments(p, "protect the methods' photos")
        p.set_defaults(handler=EvalCommand.run)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        # optional: the eval extra (torch recognizers, matplotlib), which a device install lacks
        from edgecloak.evaluation.harness import EvalSettings, run_evaluation
        from edgecloak.evaluation.report import headline_markdown, write_report

        if args.report_only:
            path = args.out / "results.json"
            if not path.exists():
                raise UsageError(f"{path}: no results to report on; run `edgecloak eval -o {args.out}` first")
            results = json.loads(path.read_text())
        else:
            chosen = dict(QUICK) if args.quick else {}
            for key, value in (("probes_per_identity", args.probes), ("methods", args.methods),
                               ("evaluators", args.evaluators), ("transforms", args.transforms)):
                if value is not None:
                    chosen[key] = value
            if args.no_sweeps:
                chosen["sweeps"] = False
            if args.no_distractors:
                chosen["distractors"] = False
            if chosen.get("probes_per_identity", 1) < 1:
                raise UsageError("--probes must be >= 1")
            bundles = {}
            for item in args.bundle:
                name, sep, path = item.partition("=")
                if not sep or not name or not path:
                    raise UsageError(f"--bundle {item!r}: give NAME=PATH")
                bundles[name] = Path(path)
            cross_family = tuple(dict.fromkeys(n for names in args.cross_family for n in names))
            settings = EvalSettings(out=args.out, identities=args.identities, seed=args.seed, backend=args.backend,
                                    far=args.far, cache_dir=args.cache, bundles=bundles, cross_family=cross_family,
                                    **fan_out_from(args), **chosen)
            results = run_evaluation(settings)
        report = write_report(results, args.out)
        print()
        print(headline_markdown(results))
        print(f"results: {args.out / 'results.json'}\nreport:  {report} (and report.html)")
        return 0
