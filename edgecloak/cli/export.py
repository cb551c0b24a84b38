"""``edgecloak export -o BUNDLE``: turn surrogate recognizers into a cloak bundle for the runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from edgecloak.errors import UsageError
from edgecloak.runtime.bundle import BundleManifest

from .settings import add_recipe_arguments, add_settings_arguments, recipe_from


class ExportCommand:
    """Export gradient graphs, embedding graphs, the detector, target embeddings and a preset
    into a bundle folder (needs the export extra: torch, onnx)."""

    @staticmethod
    def register(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("export", help="export a cloak bundle for the runtime", description=ExportCommand.__doc__)
        p.add_argument("-o", "--outdir", type=Path, required=True, help="the bundle folder to write")
        add_recipe_arguments(p, bundle=False)
        p.add_argument("--surrogates", default=None, help="comma-separated recognizers (default: the preset's)")
        p.add_argument("-k", "--num-targets", type=int, default=None, help="K, fixed in the gradient graphs")
        p.add_argument("--target", action="append", default=[], type=Path, metavar="PHOTO",
                       help="a target identity photo (repeatable); default: the shipped identities")
        p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 for TensorRT 8.5/8.6; up to 20 for TensorRT 10)")
        p.add_argument("--with-torch", action="store_true", help="also store torch programs (for --backend torch)")
        p.add_argument("--force", action="store_true", help="replace an existing bundle folder")
        add_settings_arguments(p)
        p.set_defaults(handler=ExportCommand.run)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        recipe = recipe_from(args, policy=False, num_targets=args.num_targets,
                             surrogates=args.surrogates.split(",") if args.surrogates else None)
        try:  # optional: the export extra (torch, onnx)
            from edgecloak.export.bundle import export_bundle
        except ImportError as exc:
            raise UsageError(f"export needs the export extra ({exc.name} is missing): pip install -e '.[export]'") from None
        out = export_bundle(
            args.outdir, list(recipe.surrogates), recipe.config, num_targets=recipe.num_targets,
            target_photos=args.target, opset=args.opset, with_torch=args.with_torch, force=args.force,
            progress=lambda msg: print(f"  {msg}", flush=True),
            # the bundle says which preset it was made for, and carries its self-check retries
            recipe=recipe.entry,
        )
        manifest = BundleManifest.read(out)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        print(f"bundle {out}: preset {recipe.preset}, {', '.join(s.id for s in manifest.surrogates)}, "
              f"K={manifest.num_targets}, opset {manifest.opset}, {len(manifest.files)} files, {size / 1e6:.1f} MB, "
              f"{manifest.export_seconds} s")
        for s in manifest.surrogates:
            bad = s.tensorrt_unsupported_ops
            print(f"  {s.id}: TensorRT 8.5 ops {'OK' if not bad else 'MISSING ' + ', '.join(bad)}")
        return 0
