"""``edgecloak bench``: time the TIP-IM loop per engine (JSON + table, same run, same machine)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .output import print_report


class BenchCommand:
    """Per-iteration and per-face latency of the paper-style torch loop (the test oracle, as the
    baseline), the same with batched gradients, and each available runtime backend, on a real photo
    (needs the export extra)."""

    @staticmethod
    def register(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("bench", help="benchmark the engines", description=BenchCommand.__doc__)
        p.add_argument("--ensemble", action="append", default=None, metavar="IDS",
                       help="comma-separated surrogates, repeatable (default: mobileface,faceres and facenet-casia)")
        p.add_argument("--steps", type=int, default=50, help="iterations N for every engine (paper: 50)")
        p.add_argument("-k", "--num-targets", type=int, default=10, help="targets K (paper: 10)")
        p.add_argument("--backend", action="append", default=None, help="runtime backends (default: all available)")
        p.add_argument("--photo", type=Path, default=None, help="photo to protect (default: the shipped sample)")
        p.add_argument("--no-reference", action="store_true",
                       help="skip the torch oracle's baseline rows (reference-paper, reference-batched)")
        p.add_argument("--presets", default="fast,balanced", metavar="NAMES",
                       help="comma-separated presets timed with and without each change to the loop, as ratios "
                            "against today's loop (default: fast,balanced; 'none' to skip)")
        p.add_argument("--json", type=Path, default=None, help="write the report here too")
        p.set_defaults(handler=BenchCommand.run)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        # optional: a workstation tool (run_bench needs the export extra), kept out of a device's CLI start
        from edgecloak.bench import format_table, run_bench

        ensembles = [e.split(",") for e in args.ensemble] if args.ensemble else [["mobileface", "faceres"], ["facenet-casia"]]
        report = run_bench(
            ensembles, steps=args.steps, num_targets=args.num_targets,
            backends=args.backend or ("onnxruntime", "torch", "tensorrt"), photo=args.photo,
            include_reference=not args.no_reference, progress=lambda m: print(f"  {m}", flush=True),
            presets=[] if args.presets == "none" else [n for n in args.presets.split(",") if n],
        )
        print_report(report, format_table(report), args.json)
        return 0
