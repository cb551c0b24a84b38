"""``edgecloak calibrate``: decide precision and loop budgets (the presets) by measurement.

Example:
    $ edgecloak calibrate precision --surrogates mobileface,faceres --json precision.json
    $ edgecloak calibrate precision --bundle bundles/edge --to fp16 -o bundles/edge-fp16
    $ edgecloak calibrate presets -o calib-out/ --install
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edgecloak.errors import ProtectionFailedError, UsageError

from .output import print_report
from .settings import add_fan_out_arguments, fan_out_from


class CalibrateCommand:
    """Decide by measurement: `precision` gates fp16/int8 gradient graphs against fp32 (gradient cosine
    and sign agreement on held-out real face crops, end-to-end protection); `presets` sweeps the loop's
    budget on the evaluation protocol and picks fast / balanced / max from the Pareto front of
    protection (cross-family Rank-1-UT: each recognizer family left out of the surrogates and scored
    on its own) vs latency."""

    @staticmethod
    def register(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("calibrate", help="measure precision variants and loop-budget presets",
                           description=CalibrateCommand.__doc__)
        what = p.add_subparsers(dest="what", required=True)
        q = what.add_parser("precision", help="fp16 / int8 gradient graphs vs fp32, gated on gradient fidelity")
        q.add_argument("--surrogates", default="mobileface", help="comma-separated recognizers (default mobileface)")
        q.add_argument("-k", "--num-targets", type=int, default=10, help="targets K of the graphs (default 10)")
        q.add_argument("--precisions", default="fp16,int8-forward,int8", help="variants to make and measure")
        q.add_argument("--keep", type=Path, default=None, help="keep the variant graphs in this folder")
        q.add_argument("--json", type=Path, default=None, help="write the report here too")
        q.add_argument("--bundle", type=Path, default=None,
                       help="convert this fp32 bundle instead: its gradient graphs to --to, measured and gated")
        q.add_argument("--to", default="fp16", help="precision of the converted bundle (default fp16)")
        q.add_argument("-o", "--out", type=Path, default=None, help="where the converted bundle goes")
        q.add_argument("--e2e-probes", type=int, default=3,
                       help="probes per user for the end-to-end protection gate (0 skips it)")
        q.add_argument("--allow-failed-gate", action="store_true",
                       help="write a variant that fails its gate anyway (the runtime warns on every load)")
        q.set_defaults(handler=CalibrateCommand.precision)
        b = what.add_parser("presets", help="sweep loop budgets, pick fast / balanced / max, write a Pareto report")
        b.add_argument("-o", "--out", type=Path, required=True,
                       help="folder for calibration.json, presets.json, report.md/html, pareto.png (resumable)")
        b.add_argument("--quick", action="store_true", help="three points on one surrogate (a first look, ~2 min)")
        b.add_argument("--probes", type=int, default=4, help="probe photos per user (default 4: 40 probes)")
        b.add_argument("--points", default=None,
                       help="comma-separated grid points to sweep (default: the whole grid; the presets are "
                            "chosen among those measured)")
        b.add_argument("--backend", default="auto", help="runtime backend the points run on (default auto)")
        b.add_argument("--seed", type=int, default=0, help="random seed of the loop (default 0)")
        b.add_argument("--install", action="store_true",
                       help="make the chosen presets this machine's (written to $EDGECLOAK_HOME/presets.json)")
        add_fan_out_arguments(b, "measure the points (latency is then on shared cores unless one per machine)")
        b.set_defaults(handler=CalibrateCommand.presets)

    @staticmethod
    def presets(args: argparse.Namespace) -> int:
        from edgecloak.calibration.budget_sweep import calibrate  # optional: needs the eval extra (torch)

        if args.probes < 1:
            raise UsageError("--probes must be >= 1")
        only = None if args.points is None else [p.strip() for p in args.points.split(",") if p.strip()]
        calibration = calibrate(args.out, args.quick, args.probes, args.backend, args.seed, args.install,
                                only=only, **fan_out_from(args))
        def fmt(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        for name, row in calibration["chosen"].items():
            print(f"{name:>9}: {row['name']:<16} {row['seconds']:.2f} s/photo, cross-family Rank-1-UT "
                  f"{fmt(row.get('cross_family_rank1_ut'))} (unseen {fmt(row.get('unseen_rank1_ut'))}), "
                  f"white-box Rank-1-T {row['white_box_rank1_t']:.2f}, "
                  f"self-check {row['self_check_passed']:.2f}, face PSNR {row['psnr_face']:.1f} dB")
        print(f"report {args.out / 'report.html'}")
        if not calibration["chosen"]:
            raise ProtectionFailedError("no measured point keeps white-box protection and the self-check; "
                                        "presets unchanged (see the report)")
        print(f"presets {args.out / 'presets.json'}" + (" (installed for this machine)" if args.install else ""))
        return 0

    @staticmethod
    def precision(args: argparse.Namespace) -> int:
        # optional: needs the export extra (torch, onnx)
        from edgecloak.calibration.precision import PRECISIONS, convert_bundle, format_table, precision_report

        if args.bundle is not None:
            if args.out is None:
                raise UsageError("--bundle needs -o OUT for the converted bundle")
            figures = convert_bundle(args.bundle, args.out, args.to, args.allow_failed_gate,
                                     progress=lambda m: print(f"  {m}", flush=True), e2e_probes=args.e2e_probes)
            for model_id, f in figures.items():
                print(f"{model_id} {f['name']}: gradient cosine {f['grad_cosine']:.4f}, sign agreement "
                      f"{f['sign_agreement']:.3f}, {f['ms_per_call']:.1f} ms/call "
                      f"({f['ms_per_call'] / f['reference_ms_per_call']:.2f}x fp32): "
                      f"{'pass' if f['passed'] else 'FAILED the gate (written anyway)'}")
                e2e = f.get("protection")
                if e2e:
                    t = e2e["white_box_rank1_t"]
                    print("  end to end: white-box Rank-1-T " + ", ".join(f"{k} {v:.2f}" for k, v in t.items())
                          + f" ({'pass' if e2e['passed'] else 'FAIL'})")
            print(f"bundle {args.out}")
            return 0
        precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
        unknown = [p for p in precisions if p not in PRECISIONS]
        if unknown:
            raise UsageError(f"unknown precision(s) {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
        report = precision_report(args.surrogates.split(","), args.num_targets, args.keep, precisions)
        print_report(report, format_table(report), args.json)
        return 0
