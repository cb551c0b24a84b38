"""Frames per second of the camera hook's protect step on a 640x480 clip with one face: cold frames
(every frame from scratch), warm-started frames (the previous frame's mask, moved with the face,
``--warm-steps`` steps) and profile-started frames (the owner's enrolled cloak profile, N steps).
Same clip, same machine, one run; JSON + table, ratios against cold frames.

The clip is made from a real photo of one person (the evaluation's first user: the first of their
held-out photos that the profile recognises), cropped to 640x480 around the face and panned 2 px
per frame, so the face moves as in a hand-held video (the face scaled to 200 px tall, edges repeated
where the window leaves the photo). The profile is enrolled on three OTHER
photos of that person (held out from the clip). Each row protects every
frame the way ``edgecloak run`` does (``Cloaker.protect``: detection, the loop, the self-check on
the decoded PNG bytes); the first frame of each row warms the engines up and is not timed.

Example:
    $ python scripts/bench_camera.py --preset fast --frames 12 --json docs/bench_camera.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path


def clip_frames(image, face_box, count: int, size=(640, 480), pan: int = 2, face_height: int = 200):
    """``count`` frames of ``size`` (w, h) from ``image``: the photo scaled so that the face (``face_box``,
    x0 y0 x1 y1) is ``face_height`` px tall, a window centred on the face, panned ``pan`` px per
    frame (edges repeated where the window leaves the photo)."""
    import cv2
    import numpy as np

    w, h = size
    x0, y0, x1, y1 = (float(v) for v in face_box)
    scale = face_height / max(y1 - y0, 1.0)
    big = cv2.resize(image, (max(1, int(image.shape[1] * scale + 0.5)), max(1, int(image.shape[0] * scale + 0.5))),
                     interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    pad_x, pad_y = w + pan * count, h
    big = cv2.copyMakeBorder(big, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REPLICATE)
    cx, cy = int((x0 + x1) / 2 * scale) + pad_x, int((y0 + y1) / 2 * scale) + pad_y
    left, top = cx - w // 2 - pan * count // 2, cy - h // 2
    return [np.ascontiguousarray(big[top:top + h, left + pan * i:left + pan * i + w]) for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fast", help="the camera's preset (edgecloak run's default: fast)")
    parser.add_argument("--frames", type=int, default=12, help="frames per row (default 12, the first untimed)")
    parser.add_argument("--warm-steps", type=int, default=4, help="steps of a warm-started frame (edgecloak run's default)")
    parser.add_argument("--profile-steps", type=int, nargs="+", default=[0, 2], help="steps of a profile-started frame")
    parser.add_argument("--json", type=Path, default=None, help="write the report here too")
    args = parser.parse_args(argv)

    from edgecloak import Cloaker
    from edgecloak.evaluation.harness import evaluation_photos
    from edgecloak.evaluation.protocol import split_photos
    from edgecloak.export.zoo.photos import load_face_photo
    from edgecloak.policy import SafetyPolicy
    from edgecloak.runtime.image_io import OutputFormat, load_image

    users, _ = evaluation_photos(distractors=False)
    split = split_photos(users, 4, 3)
    user = sorted(users)[0]
    cloaker = Cloaker.load(preset=args.preset, policy=SafetyPolicy(on_fail="keep"))
    output = OutputFormat()
    profile = cloaker.enroll([load_face_photo(p) for p in split.optimisation[user]], "bench", save=False)

    def recognised(path) -> bool:
        image = load_image(path)
        face = cloaker.detector.largest_face(image, str(path))
        return profile.is_owner(cloaker.protector.embed_face(image, face.landmarks))

    # the clip: the first held-out photo of the user that the profile recognises as its owner (a
    # photo it does not recognise would time the normal loop in the profile rows)
    clip_photo = next((p for p in split.probes[user] if recognised(p)), None)
    clip_recognised = clip_photo is not None
    clip_photo = clip_photo or split.probes[user][0]
    still = load_image(clip_photo)
    frames = clip_frames(still, cloaker.detector.largest_face(still, str(clip_photo)).box, args.frames)

    def run(label: str, warm: bool = False, profile_steps: int | None = None) -> dict:
        cloaker.use_profile(profile if profile_steps is not None else None, profile_steps or 0)
        seconds, passed, started, previous = [], 0, 0, None
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            result = cloaker.protect(frame, warm=previous if warm else None, output=output)
            if i:  # the first frame warms the engines up
                seconds.append(time.perf_counter() - t0)
                face = max(result.faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
                passed += face.action == "cloaked"
                started += face.warm_started or face.profile_started
            previous = result.warm_start(args.warm_steps)
        cloaker.use_profile(None)
        mean = statistics.fmean(seconds)
        return {"frames": label, "timed": len(seconds), "s_per_frame": round(mean, 3), "fps": round(1 / mean, 2),
                "self_check_passed": round(passed / len(seconds), 3), "started_from_mask": started}

    rows = [run("cold"), run(f"warm-started ({args.warm_steps} steps)", warm=True)]
    rows += [run(f"profile-started ({n} steps)", profile_steps=n) for n in args.profile_steps]
    for row in rows:
        row["x_cold"] = round(rows[0]["s_per_frame"] / row["s_per_frame"], 2)
    report = {"preset": args.preset, "backend": cloaker.backend, "clip": f"{len(frames)} frames 640x480, {user}",
              "clip_photo": clip_photo.name, "clip_photo_recognised": clip_recognised,
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
              "profile_targets": list(profile.targets), "rows": rows}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    head = ("frames", "s/frame", "fps", "x cold", "self-check", "started from a mask")
    lines = [head] + [(r["frames"], f"{r['s_per_frame']:.3f}", f"{r['fps']:.2f}", f"{r['x_cold']:.2f}x",
                       f"{r['self_check_passed']:.2f}", f"{r['started_from_mask']}/{r['timed']}") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
