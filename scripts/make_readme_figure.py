"""Make the README's before / after / difference-x10 figure from a real shipped photo.

Usage: python scripts/make_readme_figure.py [--steps N] [--support S] [--out docs/before_after.png]
The default preset, as users get it (``--steps`` / ``--support`` override its settings).
The photo (Grace Hopper, public domain, shipped in matplotlib's wheel) is fetched like the models.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from edgecloak.cloaker import Cloaker
from edgecloak.evaluation.report import difference_x10
from edgecloak.export.zoo.photos import sample_photo
from edgecloak.runtime.face_region import grown_box
from edgecloak.runtime.image_io import load_image, save_image_atomic


def panel(image: np.ndarray, label: str) -> np.ndarray:
    out = image.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 26), (0, 0, 0), -1)
    cv2.putText(out, label, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=None, help="iterations (default: the default preset's)")
    parser.add_argument("--support", default=None, help="where the mask may live (default: the default preset's)")
    parser.add_argument("--out", type=Path, default=Path("docs/before_after.png"))
    args = parser.parse_args()
    image = load_image(sample_photo())
    settings = {k: v for k, v in (("steps", args.steps), ("support", args.support)) if v is not None}
    result = Cloaker.load(**settings).protect(image)
    x0, y0, x1, y1 = grown_box(result.faces[0].box, image.shape, margin=1 / 3)
    before, after = image[y0:y1, x0:x1], result.image[y0:y1, x0:x1]
    diff = difference_x10(before, after)
    face = result.faces[0]
    sims = ", ".join(f"{m} {s['original_after']:.2f}" for m, s in face.similarity.items())
    grid = np.hstack([panel(before, "original"), panel(after, "cloaked (eps 12)"), panel(diff, "difference x10")])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image_atomic(args.out, grid)
    print(f"wrote {args.out}; target {face.target}; similarity to original after: {sims}")


if __name__ == "__main__":
    main()
