"""``edgecloak protect PHOTO... -o OUTDIR``: cloak every face, print a per-face summary."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from edgecloak.cloaker import Cloaker
from edgecloak.errors import EdgecloakError, OutputError, UsageError
from edgecloak.output_paths import duplicates, plan_outputs
from edgecloak.runtime.atomic import write_json_atomic
from edgecloak.runtime.backends import BACKENDS
from edgecloak.runtime.image_io import OutputFormat

from .settings import (add_policy_arguments, add_profile_arguments, add_recipe_arguments, add_settings_arguments,
                       recipe_from)


class ProtectCommand:
    """Protect photos into an output folder (lossless PNG unless --format jpg)."""

    @staticmethod
    def register(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("protect", help="cloak the faces of photos", description=ProtectCommand.__doc__)
        p.add_argument("photos", nargs="*", type=Path, help="photos to protect (never modified)")
        p.add_argument("--sample", action="store_true", help="also protect a shipped real sample photo (Grace Hopper)")
        p.add_argument("-o", "--outdir", type=Path, required=True, help="output folder (created if missing)")
        add_recipe_arguments(p)
        p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                       help="what runs the surrogates: auto picks the best available; torch needs the export extra")
        p.add_argument("--surrogates", default=None, help="comma-separated recognizers (default: the preset's)")
        p.add_argument("--target", action="append", default=[], type=Path, metavar="PHOTO",
                       help="a target identity photo (repeatable); default: the 10 shipped identities")
        p.add_argument("-k", "--num-targets", type=int, default=None, help="use the first K targets (paper: 10)")
        add_profile_arguments(p)
        add_settings_arguments(p)
        add_policy_arguments(p)
        p.add_argument("--format", choices=("png", "jpg"), default="png", help="output format (png is lossless)")
        p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality when --format jpg")
        p.add_argument("--json", type=Path, default=None, help="also write the per-face summary as JSON here")
        p.add_argument("--overwrite", action="store_true",
                       help="replace output files that already exist (never the input photos themselves)")
        p.set_defaults(handler=ProtectCommand.run)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        outdir: Path = args.outdir
        output = OutputFormat.named(args.format, args.jpeg_quality)  # a bad quality fails now, not after cloaking
        recipe = recipe_from(args, surrogates=args.surrogates.split(",") if args.surrogates else None)
        if args.sample:
            from edgecloak.export.zoo.photos import sample_photo  # optional: the sample ships with the export extra

            args.photos = [*args.photos, sample_photo()]
        if not args.photos:
            raise UsageError("give at least one photo (or --sample)")
        planned = plan_outputs(args.photos, outdir, output.suffix)
        if args.json is not None:
            check_summary_path(args.json, outdir, [*args.photos, *(i.destination for i in planned)], args.overwrite)
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{outdir}: cannot create the output folder ({exc.strerror})") from exc
        summary, exit_code = [], 0
        if not args.overwrite:  # refuse before minutes of work (protect_file checks again, race-free, on writing)
            for item in [i for i in planned if i.destination.exists() or i.destination.is_symlink()]:
                err = OutputError(f"{item.destination}: already exists; pass --overwrite to replace it or choose another output")
                print(f"edgecloak: error: {err}", file=sys.stderr)
                exit_code = err.exit_code
                summary.append({"photo": str(item.source), "error": str(err)})
                planned.remove(item)
        if not planned:
            _write_summary(args.json, summary, args.overwrite)
            return exit_code

        cloaker = Cloaker.from_recipe(recipe, args.backend, target_photos=args.target, num_targets=args.num_targets)
        if args.profile is not None:
            cloaker.use_profile(args.profile, args.profile_steps)
        print(f"backend: {cloaker.backend}")
        for photo in duplicates(args.photos):
            print(f"note: {photo} was given more than once; protected once")

        for item in planned:
            photo, dest = item.source, item.destination
            if item.note:
                print(f"note: {photo} -> {dest} ({item.note})")
            # progress on a terminal only: scripts and logs get the summary lines, not bar redraws
            bar = tqdm(total=cloaker.config.steps, desc=photo.name, unit="step", leave=False, disable=None)
            try:
                result = cloaker.protect_file(photo, dest, jpeg_quality=output.jpeg_quality, on_step=lambda _i: bar.update(1),
                                              overwrite=args.overwrite)
            except EdgecloakError as err:
                bar.close()
                print(f"edgecloak: error: {err}", file=sys.stderr)
                exit_code = err.exit_code  # go on with the other photos; report the failure at the end
                summary.append({"photo": str(photo), "error": str(err)})
                continue
            bar.close()
            change = f"max pixel change {result.max_abs_change}"
            if output.lossy:  # the JPEG's own error adds to the mask; say both, measured on the written file
                change += f" in the written file (mask {result.mask_max_abs_change} before encoding)"
            print(f"{photo} -> {dest} ({output.describe()}): {len(result.faces)} face(s), {change}")
            for i, face in enumerate(result.faces):
                state = "" if face.action == "cloaked" else f" {face.action.upper()}: {face.reason}"
                margin = "" if face.margin is None else f" margin={face.margin:+.2f}"
                print(f"  face {i} box={tuple(round(v) for v in face.box)} target={face.target}{margin}"
                      f" steps={face.steps}{state}" + ("" if face.redetected else " (not re-detected after cloaking)"))
                for model, s in face.similarity.items():
                    print(f"    {model:<14} sim(original) 1.00 -> {s['original_after']:.2f}   "
                          f"sim(target) {s['target_before']:.2f} -> {s['target_after']:.2f}")
            summary.append({"photo": str(photo), "output": str(dest), "format": output.describe(),
                            "max_abs_change": result.max_abs_change, "mask_max_abs_change": result.mask_max_abs_change,
                            "faces": [vars(f) for f in result.faces]})
        _write_summary(args.json, summary, args.overwrite)
        return exit_code


def _write_summary(path: Path | None, summary: list, overwrite: bool) -> None:
    if path is not None:
        write_json_atomic(path, summary, overwrite=overwrite)


def check_summary_path(path: Path, outdir: Path, taken: list[Path], overwrite: bool) -> None:
    """``UsageError`` now, before any work, for a ``--json`` path that cannot or must not be written:
    a missing or read-only folder (the output folder counts: it is made), an input photo or an output
    of this run, or an existing file without ``--overwrite``."""
    if any(path.resolve() == p.resolve() for p in taken):
        raise UsageError(f"--json {path}: that is a photo or an output of this run; choose another name")
    if path.parent.resolve() != outdir.resolve():
        check_writable_parent(path, "--json")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UsageError(f"--json {path}: already exists; pass --overwrite to replace it or choose another name")


def check_writable_parent(path: Path, flag: str) -> None:
    """``UsageError`` now, before any work, when ``path`` cannot be written (missing or read-only folder)."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: the folder {parent} is not writable")
