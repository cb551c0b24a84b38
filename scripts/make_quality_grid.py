"""Before / after / difference of a dozen real faces at 100% zoom, for one or more recipes side by side.

Usage:
    python scripts/make_quality_grid.py balanced balanced+support=face+perceptual=1 --out docs/quality_grid.png

Each recipe is a preset, maybe with settings (``PRESET+KEY=VALUE+...``, as ``edgecloak eval
--cross-family`` takes them). The faces: the sample photo (a flat blue background beside the face),
the first probe photo of each of the evaluation's users, and one photo turned greyscale. Each row is
one face, cropped around its box at the photo's own resolution (no resampling): the original, then
per recipe the cloaked face and its difference x10 (grey: no change), labelled with the face's PSNR
and SSIM. The photos are fetched like the models (pinned hashes) and never committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from edgecloak.cloaker import Cloaker
from edgecloak.evaluation.harness import judged_recipe
from edgecloak.evaluation.metrics import psnr, ssim
from edgecloak.evaluation.report import difference_x10
from edgecloak.export.zoo.photos import identity_photos, load_face_photo, more_identity_photos, sample_photo
from edgecloak.policy import SafetyPolicy
from edgecloak.runtime.atomic import write_json_atomic
from edgecloak.runtime.face_region import grown_box
from edgecloak.runtime.image_io import load_image, save_image_atomic


def grid_photos() -> list[tuple[str, np.ndarray]]:
    """(label, RGB image) of the faces shown: sample photo, one per user, one greyscale."""
    photos = [("sample (flat background)", load_image(sample_photo()))]
    users = {**identity_photos(), **more_identity_photos()}
    for name, paths in sorted(users.items()):
        photos.append((name, load_face_photo(sorted(paths)[0])))
    name, paths = sorted(users.items())[0]
    grey = cv2.cvtColor(load_face_photo(sorted(paths)[1]), cv2.COLOR_RGB2GRAY)
    photos.append((f"{name} (greyscale)", np.repeat(grey[..., None], 3, axis=2)))
    return photos


def label(tile: np.ndarray, text: str) -> np.ndarray:
    out = np.vstack([np.zeros((18, tile.shape[1], 3), np.uint8), tile])
    cv2.putText(out, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def pad_to(tile: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.full((h, w, 3), 255, np.uint8)
    out[:tile.shape[0], :tile.shape[1]] = tile
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", help="PRESET or PRESET+KEY=VALUE+...")
    parser.add_argument("--out", type=Path, default=Path("docs/quality_grid.png"))
    parser.add_argument("--json", type=Path, default=None, help="per-face quality figures (default: beside --out)")
    args = parser.parse_args()
    photos = grid_photos()
    cloakers = {}
    for spec in args.recipes:
        preset, settings = judged_recipe(spec)
        surrogates = settings.pop("surrogates", None)
        cloakers[spec] = Cloaker.load(preset=preset, surrogates=surrogates, policy=SafetyPolicy(on_fail="keep"),
                                      **settings)
    rows, figures = [], []
    for name, image in tqdm(photos, desc="faces", unit="face"):
        tiles, row = None, {"face": name}
        for spec, cloaker in cloakers.items():
            result = cloaker.protect(image)
            x0, y0, x1, y1 = grown_box(result.faces[0].box, image.shape, margin=0.2)
            before, after = image[y0:y1, x0:x1], result.image[y0:y1, x0:x1]
            diff = difference_x10(before, after)
            quality = {"psnr_face": psnr(before, after), "ssim_face": ssim(before, after),
                       "protected": result.faces[0].protected}
            row[spec] = quality
            if tiles is None:
                tiles = [label(before, name[:28])]
            tiles += [label(after, f"{spec[:30]}"),
                      label(diff, f"x10: {quality['psnr_face']:.1f} dB, SSIM {quality['ssim_face']:.2f}")]
        h = max(t.shape[0] for t in tiles)
        rows.append(np.hstack([pad_to(t, h, t.shape[1]) for t in tiles]))
        figures.append(row)
    width = max(r.shape[1] for r in rows)
    grid = np.vstack([pad_to(r, r.shape[0] + 6, width) for r in rows])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image_atomic(args.out, grid)
    out_json = args.json or args.out.with_suffix(".json")
    write_json_atomic(out_json, figures)
    for spec in args.recipes:
        values = [f[spec]["psnr_face"] for f in figures]
        print(f"{spec}: mean face PSNR {np.mean(values):.2f} dB over {len(values)} faces, "
              f"SSIM {np.mean([f[spec]['ssim_face'] for f in figures]):.3f}")
    print(f"wrote {args.out} and {out_json}")


if __name__ == "__main__":
    main()
