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

from edgecloak.calibration.presets import PRESETS
from edgecloak.errors import UsageError
from edgecloak.runtime.backends import BACKENDS

from .settings import add_policy_arguments, add_settings_arguments, policy_from, settings_from


class RunCommand:
    """Capture frames, cloak every face (self-checked; failing frames are dropped unless --on-fail says
    otherwise), write them atomically with a JSON sidecar into the outbox, and run --upload-cmd on
    each in the background. Stops cleanly on Ctrl-C / SIGTERM, at the end of a video, or when the
    camera is lost; SIGUSR1 takes a snapshot."""

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
        p.add_argument("--upload-cmd", default=None, help="run on each finished frame ({} = its path)")
        p.add_argument("--queue-size", type=int, default=8, help="upload queue length; beyond it frames wait in the outbox")
        p.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish uploads when stopping")
        p.add_argument("--upload-pending", action="store_true", help="only upload what the outbox has pending, then exit")
        p.add_argument("--preview", action="store_true", help="show the cloaked frames in a window (needs a display)")
        p.add_argument("--bundle", type=Path, default=None, help="a cloak bundle (default: the preset's)")
        p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS, "reference"))
        p.add_argument("--preset", default="fast", choices=tuple(PRESETS),
                       help="without --bundle (default fast: a frame in about half a second on a 2-core CPU)")
        p.add_argument("--format", choices=("png", "jpg"), default="png")
        p.add_argument("--jpeg-quality", type=int, default=95)
        add_settings_arguments(p)
        add_policy_arguments(p)
        p.set_defaults(handler=RunCommand.run)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from edgecloak.camera import CameraSession, Outbox, RunSettings, Uploader

        if args.upload_pending:
            if not args.upload_cmd:
                raise UsageError("--upload-pending needs --upload-cmd")
            uploader = Uploader(args.upload_cmd, Outbox(args.outbox), args.queue_size)
            print(f"{uploader.resume()} pending frame(s) in {args.outbox}")
            counts = uploader.close(drain_timeout=float("inf") if args.drain_timeout <= 0 else args.drain_timeout)
            print(json.dumps(counts))
            return 0 if counts["failed"] == 0 and counts["pending"] == 0 else 1
        if args.camera is None:
            raise UsageError("give --camera SOURCE (or --upload-pending)")
        settings = RunSettings(
            source=args.camera, outbox=args.outbox, mode=args.mode, every=args.every, trigger_file=args.trigger_file,
            max_frames=args.max_frames, warm_steps=args.warm_steps, warm_gap=0 if args.no_warm_start else 5,
            fmt=args.format,
            jpeg_quality=args.jpeg_quality if args.format == "jpg" else None, upload_cmd=args.upload_cmd,
            queue_size=args.queue_size, drain_timeout=args.drain_timeout, preview=args.preview,
        )
        from edgecloak.camera import FrameSource
        from edgecloak.cloaker import Cloaker

        FrameSource(args.camera).close()  # fail fast, before the models load
        cloaker = Cloaker.load(bundle=args.bundle, backend=args.backend, preset=args.preset,
                               policy=policy_from(args), **settings_from(args))
        print(f"backend: {cloaker.backend}", flush=True)
        summary = CameraSession(cloaker, settings, log=lambda m: print(m, flush=True)).run()
        print(json.dumps(summary))
        print(f"{summary['emitted']} cloaked frame(s) of {summary['read']} read ({summary['stopped']}); "
              f"{summary['fps']} frames/s emitted, {summary['cloak_seconds_per_frame']} s cloaking per frame")
        return 0
