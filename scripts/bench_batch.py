"""Batch throughput on this machine: 1 process, N local processes and Ray with N workers, on the
same folder of real photos, same preset; JSON + table, side by side as ratios.

Each configuration cloaks the whole library into a fresh folder (nothing resumed). Reported:
photos/s over the whole run (model loading included) and after the first photo (what a long run
sustains), and scaling efficiency = rate(N workers) / (N x rate(1 process)).

Example:
    $ python scripts/bench_batch.py --photos 12 --workers 2 --preset fast --json bench-batch.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path


def make_library(folder: Path, count: int) -> Path:
    """``count`` real face photos (round-robin over the 5 identities), copied into ``folder``."""
    from edgecloak.export.zoo.photos import identity_photos

    photos = identity_photos()
    names = sorted(photos)
    for i in range(count):
        src = photos[names[i % len(names)]][i // len(names)]
        shutil.copy(src, folder / f"{i:03d}-{src.name}")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray configuration")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from edgecloak.batch import BatchSettings, run_batch
    from edgecloak.batch.worker import WorkerSpec
    from edgecloak.calibration.budget import machine_description

    spec = WorkerSpec(preset=args.preset, policy={"on_fail": "keep"})  # every photo costs the same path
    configs = [("1 process", 1, False), (f"{args.workers} processes", args.workers, False)]
    if not args.no_ray:
        configs.append((f"ray x{args.workers}", args.workers, True))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "library").mkdir()
        library = make_library(Path(tmp) / "library", args.photos)
        for label, workers, ray in configs:
            summary = run_batch(BatchSettings(library, Path(tmp) / label.replace(" ", "-"), spec, workers, ray),
                                progress=False, log=lambda m: print(m, file=sys.stderr))
            rows.append({"config": label, "workers": workers, "ray": ray, "seconds": summary["seconds"],
                         "photos_per_second": summary["photos_per_second"],
                         "photos_per_second_after_first": summary["photos_per_second_after_first"],
                         "backend": summary["backend"], "statuses": summary["statuses"]})
    base = rows[0]
    for row in rows:
        for key in ("photos_per_second", "photos_per_second_after_first"):
            ratio = row[key] / base[key] if row[key] and base[key] else None
            row[key.replace("photos_per_second", "speedup")] = round(ratio, 3) if ratio else None
        row["efficiency"] = round(row["speedup_after_first"] / row["workers"], 3) if row["speedup_after_first"] else None
    report = {"machine": machine_description(), "photos": args.photos, "preset": args.preset, "runs": rows}
    print(json.dumps(report, indent=2))
    print()
    print(f"{'config':<14} {'s':>7} {'photos/s':>9} {'after 1st':>10} {'speedup':>8} {'efficiency':>10}")
    for r in rows:
        print(f"{r['config']:<14} {r['seconds']:>7.1f} {r['photos_per_second']:>9.3f} "
              f"{r['photos_per_second_after_first'] or 0:>10.3f} {r['speedup_after_first'] or 0:>7.2f}x "
              f"{r['efficiency'] or 0:>10.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
