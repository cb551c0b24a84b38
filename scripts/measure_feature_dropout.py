"""How much a feature-dropout mask turns each surrogate's gradient: the diagnostic behind the
``feature_dropout`` measurements in docs/transfer.md. JSON + table.

For each surrogate of a recipe's bundle and each dropout rate: the gradient of the real loss
(towards each target, at the sample photo's aligned face) with a fresh random mask, against the
plain network's, as a cosine per pixel (what a sign step follows) and after a Gaussian blur of 2
face pixels (the coarse direction that transfers), averaged over ``--masks`` masks.

Example:
    $ python scripts/measure_feature_dropout.py --preset balanced --rates 0.01,0.03,0.1 --json fd.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--rates", default="0.01,0.03,0.1")
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from edgecloak.cloaker import Cloaker
    from edgecloak.export.zoo.photos import sample_photo
    from edgecloak.runtime.diversity import dropout_mask
    from edgecloak.runtime.image_io import load_image
    from edgecloak.runtime.smoothing import smooth_planes
    from edgecloak.runtime.tipim import face_sampler

    cloaker = Cloaker.load(preset=args.preset)
    protector = cloaker.protector
    image = load_image(sample_photo())
    landmarks = cloaker.detector.detect(image)[0].landmarks
    targets = protector.targets.excluding_lookalikes(protector.embed_face(image, landmarks))
    region = protector.face_region(landmarks, image.shape[:2])
    x0, y0, x1, y1 = region.box
    pixels = np.ascontiguousarray(image[y0:y1, x0:x1].transpose(2, 0, 1)[None], dtype=np.float32)
    rates = [float(r) for r in args.rates.split(",")]
    rng = np.random.default_rng(0)
    rows = []
    for engine in protector.engines:
        size = engine.files.input_size
        crop = face_sampler(region, engine.id, size, None).forward(pixels)
        real = engine.embed(crop).copy()
        cot = (2.0 * (real - targets.embeddings[engine.id]))[None].astype(np.float32)
        plain = engine.embed_and_grad(crop, cot)[1][0].copy()
        plain_coarse = smooth_planes(plain, 2.0 * size / 112)
        for rate in rates:
            fine, coarse = [], []
            for _ in range(args.masks):
                keep = dropout_mask(rate, rng, np.empty((1, engine.files.feature_keep_size), np.float32))
                dropped = engine.embed_and_grad(crop, cot, keep)[1][0]
                fine.append(np.mean([_cos(dropped[k], plain[k]) for k in range(len(dropped))]))
                coarse_d = smooth_planes(dropped, 2.0 * size / 112)
                coarse.append(np.mean([_cos(coarse_d[k], plain_coarse[k]) for k in range(len(dropped))]))
            rows.append({"surrogate": engine.id, "rate": rate, "masks": args.masks,
                         "gradient_cosine": round(float(np.mean(fine)), 3),
                         "coarse_gradient_cosine": round(float(np.mean(coarse)), 3)})
    print("| surrogate | dropout rate | gradient cosine to the plain network's | after a 2-face-px blur |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['surrogate']} | {r['rate']:g} | {r['gradient_cosine']:.3f} | {r['coarse_gradient_cosine']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
