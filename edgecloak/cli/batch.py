"""``edgecloak batch SRC DST``: cloak a photo library into a mirrored tree, with a manifest.

Example:
    $ edgecloak batch photos/ cloaked/ --workers 2
    $ edgecloak batch photos/ cloaked/ --ray                  # a local Ray instance
    $ edgecloak batch /mnt/photos /mnt/cloaked --ray ray://head:10001 --workers 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dataclasses import asdict

from edgecloak.batch import BatchSettings, run_batch
from edgecloak.batch.worker import WorkerSpec
from edgecloak.errors import ProtectionFailedError
from edgecloak.presets import DEFAULT_PRESET
from edgecloak.runtime.backends import BACKENDS
from edgecloak.runtime.image_io import OutputFormat

from .protect import check_writable_parent
from .settings import (add_fan_out_arguments, add_policy_arguments, add_profile_arguments, add_recipe_arguments,
                       add_settings_arguments, fan_out_from, recipe_from, settings_from)


class BatchCommand:
    """Cloak every photo under SRC into DST (tree mirrored, PNG unless --format jpg). DST/manifest.jsonl
    records each photo (hashes, faces, self-check, status); a re-run skips what is done and intact.
    Photos that fail (unreadable, no face, failed self-check) are recorded, not written, and do not
    stop the run; the exit status is 4 when any photo did not finish. A file in DST that batch did not
    write (per the manifest) is never replaced or removed without --overwrite; that photo is recorded
    as an error instead."""

    @staticmethod
    def register(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("batch", help="cloak a photo library (resumable; local processes or Ray)",
                           description=BatchCommand.__doc__)
        p.add_argument("source", type=Path, help="folder of photos (walked recursively; never modified)")
        p.add_argument("destination", type=Path, help="output folder (the tree is mirrored; manifest and summary go here)")
        add_recipe_arguments(p)
        p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS), help="engine of the surrogates")
        add_fan_out_arguments(p, "cloak photos (each worker loads its own models; Ray: Data over an actor pool)")
        add_profile_arguments(p)
        add_settings_arguments(p)
        add_policy_arguments(p)
        p.add_argument("--format", choices=("png", "jpg"), default="png", help="output format (png is lossless)")
        p.add_argument("--jpeg-quality", type=int, default=95,
                       help="JPEG quality 1..100 when --format jpg (default 95); the self-check runs on the JPEG as written")
        p.add_argument("--copy-faceless", action="store_true",
                       help="also write photos where no face is found (re-encoded, metadata stripped)")
        p.add_argument("--json", type=Path, default=None,
                       help="write the summary here too (not inside SRC; an existing file only with --overwrite)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace or remove files in DST that batch did not write (by default only its own "
                            "outputs, as the manifest records them, are replaced), and an existing --json file")
        p.set_defaults(handler=BatchCommand.run)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Build everything that can be refused (output format, policy, workers) before any worker starts.

        Example:
            $ edgecloak batch photos/ cloaked/ --format jpg --jpeg-quality 0      # exit 2, nothing started
            edgecloak: error: --jpeg-quality must be a whole number in 1..100, got 0
        """
        output = OutputFormat.named(args.format, args.jpeg_quality)  # a bad quality fails now, not per photo
        if args.json is not None:
            check_writable_parent(args.json, "--json")
        recipe = recipe_from(args)  # refused now, in one line, before any worker starts
        # the request as plain data (what the manifest's key is made of); the driver resolves it again
        # into the same recipe for every worker (``batch.worker.resolved``)
        spec = WorkerSpec(preset=args.preset or DEFAULT_PRESET, bundle=str(args.bundle) if args.bundle else None,
                          backend=args.backend, settings=settings_from(args), policy=asdict(recipe.policy),
                          output=output, copy_faceless=args.copy_faceless, profile=args.profile,
                          profile_steps=args.profile_steps)
        fan = fan_out_from(args)
        settings = BatchSettings(args.source, args.destination, spec, fan["workers"], fan["ray"], fan["ray_address"],
                                 overwrite=args.overwrite, summary_copy=args.json)
        summary = run_batch(settings)  # the --json copy is checked before any work and written by the job
        rows = [f"{k:>24}: {summary[k]}" for k in ("photos", "skipped_already_done", "processed",
                                                     "finished_in_library", "unprotected", "unprotected_in_library",
                                                     "seconds", "photos_per_second", "photos_per_second_after_first",
                                                     "executor", "backend", "output_format")]
        rows.append(f"{'statuses':>24}: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["statuses"].items())))
        print("\n".join(rows))
        manifest = args.destination / "manifest.jsonl"
        print(f"{'manifest':>24}: {manifest} (summary: summary.json beside it)")
        unprotected = summary["unprotected_in_library"]  # finished, but a face was left as it was
        kept = f"{unprotected} written with an unprotected face" + (" (--on-fail keep)" if unprotected else "")
        if summary["finished_in_library"] < summary["photos"]:
            raise ProtectionFailedError(f"{summary['photos'] - summary['finished_in_library']} photo(s) not cloaked, "
                                        f"{kept}; see {manifest}")
        print(f"{summary['finished_in_library']} of {summary['photos']} photo(s) written to {args.destination}, "
              f"{kept}" + (f"; see {manifest}" if unprotected else ""))
        return 0
