"""``edgecloak run --camera SOURCE --outbox DIR``: cloak frames from a camera, video or stream.

Example:
    $ edgecloak run --camera 0 --outbox ~/outbox --every 30 --upload-cmd "rclone copy {} remote:photos"
    $ edgecloak run --camera clip.mp4 --outbox out/ --mode continuous --preset edge
    $ edgecloak run --outbox ~/outbox --upload-cmd "rclone copy {} remote:photos" --upload-pending
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgecloak.camera import CameraSession, FrameSource, Outbox, RunSettings, Uploader
from edgecloak.cloaker import Cloaker
from edgecloak.errors import UsageError
from edgecloak.runtime.backends import BACKENDS

from .settings import (add_policy_arguments, add_profile_arguments, add_recipe_arguments, add_settings_arguments,
                       recipe_from)

# a frame in about half a second on a 2-core CPU (measured; see the README's camera section)
CAMERA_PRESET = "fast"


class RunCommand:
    """Capture frames, cloak every face (self-checked on the encoded output; failing frames are dropped
    unless --on-fail says otherwise), write them atomically with a JSON sidecar into the outbox, and
    run --upload-cmd on each in the background ({} is the frame's path as one argument; no shell).
    Stops cleanly on Ctrl-C / SIGTERM, at the end of a video, or when the camera is lost (exit 8);
    SIGUSR1 takes a snapshot. Exit 4 when frames were cloaked but every one was dropped. Frames written
    with a face that failed the self-check (--on-fail keep) are counted as unprotected and held in the
    outbox, not uploaded, unless --upload-unprotected."""

    @staticmethod
    def register(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("run", help="cloak a camera, video or stream into an outbox", description=RunCommand.__doc__)
        p.add_argument("--camera", default=None, metavar="SOURCE", help="camera index (0), video file or stream URL")
        p.add_argument("--outbox", type=Path, required=True, help="folder of finished, cloaked frames")
        p.add_argument("--mode", choices=("snapshot", "continuous"), default="snapshot",
                       help="snapshot: every --every frames / on --trigger-file / on SIGUSR1; continuous: every frame")
        p.add_argument("--every", type=int, default=None, help="snapshot every N frames (default 30 without a trigger)")
        p.add_argument("--trigger-file", type=Path, default=None, help="snapshot when this file appears (it is removed)")
        p.add_argument("--max-frames", type=int, default=None, help="stop after reading N frames")
        p.add_argument("--warm-steps", type=int, default=None,
                       help="iterations for a face continuing from the previous frame (default: --steps)")
        p.add_argument("--no-warm-start", action="store_true", help="cloak every frame from scratch (for comparison)")
        p.add_argument("--upload-cmd", default=None,
                       help="run on each finished frame, no shell; {} = its path as one argument "
                            "(in your own sh -c script pass it as \"$1\": sh -c 'cp \"$1\" dst/' _ {})")
        p.add_argument("--upload-unprotected", action="store_true",
                       help="upload frames whose sidecar says a face is not protected (--on-fail keep) too; "
                            "without it they stay in the outbox, held")
        p.add_argument("--queue-size", type=int, default=8, help="upload queue length; beyond it frames wait in the outbox")
        p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish uploads when stopping")
        p.add_argument("--upload-pending", action="store_true", help="only upload what the outbox has pending, then exit")
        p.add_argument("--preview", action="store_true", help="show the cloaked frames in a window (needs a display)")
        add_recipe_arguments(p, default_preset=CAMERA_PRESET)
        p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS))
        p.add_argument("--format", choices=("png", "jpg"), default="png",
                       help="png is lossless; jpg frames are self-checked as the JPEG decodes")
        p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1..100 when --format jpg")
        add_profile_arguments(p)
        add_settings_arguments(p)
        add_policy_arguments(p)
        p.set_defaults(handler=RunCommand.run)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        if args.upload_pending:
            if not args.upload_cmd:
                raise UsageError("--upload-pending needs --upload-cmd")
            outbox = Outbox(args.outbox, writer=False)  # a session may be writing into it right now
            if outbox.removed_sidecars:
                print(f"removed {outbox.removed_sidecars} sidecar(s) of frames a killed run never finished writing")
            uploader = Uploader(args.upload_cmd, outbox, args.queue_size, log=lambda m: print(m, flush=True),
                                upload_unprotected=args.upload_unprotected)
            print(f"{uploader.resume()} pending frame(s) in {args.outbox}", flush=True)
            counts = uploader.close(drain_timeout=float("inf") if args.drain_timeout <= 0 else args.drain_timeout)
            outbox.close()
            print(json.dumps({**counts, "removed_sidecars": outbox.removed_sidecars}))
            # rejected frames need a person: say so in the exit status too, every time until they are gone.
            # Held frames (a face not protected, --on-fail keep) do not: holding them is the choice made.
            if counts["held"]:
                print(f"{counts['held']} frame(s) with a face not protected held in {args.outbox}, not uploaded "
                      "(--upload-unprotected uploads them)")
            return 0 if counts["failed"] == counts["pending"] == counts["rejected"] == 0 else 1
        if args.camera is None:
            raise UsageError("give --camera SOURCE (or --upload-pending)")
        settings = RunSettings(
            source=args.camera, outbox=args.outbox, mode=args.mode, every=args.every, trigger_file=args.trigger_file,
            max_frames=args.max_frames, warm_steps=args.warm_steps, warm_gap=0 if args.no_warm_start else 5,
            fmt=args.format,
            jpeg_quality=args.jpeg_quality if args.format == "jpg" else None, upload_cmd=args.upload_cmd,
            upload_unprotected=args.upload_unprotected,
            queue_size=args.queue_size, drain_timeout=args.drain_timeout, preview=args.preview,
        )
        recipe = recipe_from(args, default_preset=CAMERA_PRESET)
        FrameSource(args.camera).close()  # fail fast, before the models load
        cloaker = Cloaker.from_recipe(recipe, args.backend)
        if args.profile is not None:
            cloaker.use_profile(args.profile, args.profile_steps)
        print(f"backend: {cloaker.backend}", flush=True)
        # logs the summary (JSON) and a final line, then raises for a lost camera (8) or all frames dropped (4)
        CameraSession(cloaker, settings, log=lambda m: print(m, flush=True)).run()
        return 0
