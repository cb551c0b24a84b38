"""Seconds per photo of recipe variants, side by side on the same photos in one run: the cost axis
of a transfer comparison (``edgecloak eval --cross-family`` measures the protection; its seconds
are on shared cores when runs overlap, these are not). JSON + table, ratios against the first.

Recipes are written as ``--cross-family`` takes them (``edgecloak.evaluation.harness.judged_recipe``):
``balanced``, ``balanced+ti_sigma=1``, ``balanced+surrogates=a/b/c+steps=10``. Each protects the
same probe photos of the evaluation protocol (the first photo per user, up to ``--photos``),
once to warm up (the bundle export or load), then timed; the loop as configured, no self-check
retries, so the figure is the recipe's cost and not the luck of its retries.

Example:
    $ python scripts/bench_recipes.py balanced "balanced+surrogates=mobileface/faceres/facenet-casia/faceres-deep/facenet-keras+steps=10" --photos 6 --json bench-recipes.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="+", help="recipe specs, the first is the reference")
    parser.add_argument("--photos", type=int, default=6, help="photos to time (one per user, default 6)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="write the report here too")
    args = parser.parse_args(argv)

    from edgecloak import Cloaker
    from edgecloak.evaluation.harness import evaluation_photos, judged_recipe
    from edgecloak.export.zoo.photos import load_face_photo
    from edgecloak.evaluation.protocol import split_photos
    from edgecloak.policy import SafetyPolicy
    from edgecloak.recipe import resolve

    users, _ = evaluation_photos(distractors=False)
    split = split_photos(users, 4, 3)
    photos = [load_face_photo(split.probes[u][0]) for u in sorted(users)][: args.photos]
    rows = []
    for spec in args.recipes:
        preset, settings = judged_recipe(spec)
        surrogates = settings.pop("surrogates", None)
        recipe = resolve(preset, surrogates=surrogates, settings=settings,
                         policy=SafetyPolicy(retries=0, on_fail="keep"))
        cloaker = Cloaker.from_recipe(recipe, args.backend)
        cloaker.protect(photos[0])  # warm-up: sessions, buffers, the first-call costs
        seconds = []
        for image in photos:
            t0 = time.perf_counter()
            cloaker.protect(image)
            seconds.append(time.perf_counter() - t0)
        rows.append({"recipe": spec, "surrogates": list(recipe.surrogates), "steps": recipe.config.steps,
                     "photos": len(seconds), "median_s": statistics.median(seconds),
                     "mean_s": statistics.fmean(seconds), "backend": cloaker.backend})
        cloaker.protector.close()
    for row in rows:
        row["ratio_to_first"] = row["median_s"] / rows[0]["median_s"]
    print(f"{'recipe':<60} {'surrogates':>10} {'N':>4} {'median s':>9} {'mean s':>8} {'ratio':>6}")
    for row in rows:
        print(f"{row['recipe'][:60]:<60} {len(row['surrogates']):>10} {row['steps']:>4} {row['median_s']:>9.2f} "
              f"{row['mean_s']:>8.2f} {row['ratio_to_first']:>6.2f}")
    report = {"rows": rows}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
