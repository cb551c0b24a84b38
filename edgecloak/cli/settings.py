"""TIP-IM setting flags shared by the subcommands that run or export the loop.

Every flag defaults to None, meaning "the bundle's preset" (or the paper's default without one),
so only what the user typed overrides anything.

Example:
    >>> import argparse; p = argparse.ArgumentParser(); add_settings_arguments(p)
    >>> settings_from(p.parse_args(["--steps", "20", "--no-diversity"]))
    {'steps': 20, 'diversity': None}
"""

from __future__ import annotations

import argparse
from typing import Any

_FLAGS = (
    ("eps", float, "L_inf budget on 0..255 (paper: 12)"),
    ("steps", int, "iterations N (paper: 50)"),
    ("alpha", float, "step size (paper: 1.5)"),
    ("mu", float, "momentum decay (paper: 1.0)"),
    ("gamma", float, "MMD naturalness weight (public code: 0)"),
    ("seed", int, "random seed of the input diversity (default 0)"),
    ("stop_margin", float, "stop early once every surrogate is fooled by this cosine margin (default: all steps)"),
    ("rescore_every", int, "score all K target candidates only every R steps (default 1: every step)"),
    ("settle_after", int, "stop re-scoring once one target won this many re-scorings in a row (default: never)"),
)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --eps --steps --alpha --mu --gamma --seed --norm --no-diversity (all default: preset)."""
    for name, kind, text in _FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=text)
    parser.add_argument("--norm", choices=("linf", "l2"), default=None, help="step rule (default linf)")
    parser.add_argument("--no-diversity", action="store_true", help="turn off input diversity (alignment jitter)")


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The TIPIMConfig fields the user set on the command line."""
    out = {name: getattr(args, name) for name, _, _ in _FLAGS if getattr(args, name) is not None}
    if args.norm is not None:
        out["norm"] = args.norm
    if args.no_diversity:
        out["diversity"] = None
    return out


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --on-fail --min-margin --retries --min-face (the self-check, see ``SafetyPolicy``)."""
    parser.add_argument("--on-fail", choices=("drop", "blur-face", "keep"), default="drop",
                        help="a face that fails the self-check: drop the photo (default), hide the face "
                             "under a mosaic, or keep it as is")
    parser.add_argument("--min-margin", type=float, default=0.0,
                        help="self-check: surrogate mean of cos(target) - cos(original) a face must exceed (default 0)")
    parser.add_argument("--retries", type=int, default=None,
                        help="re-runs of a failing face, each with twice the steps (default: the preset's, or the one "
                             "a --bundle was exported for)")
    parser.add_argument("--min-face", type=int, default=32, help="faces smaller than this (px) count as failed")


def policy_from(args: argparse.Namespace):
    """The ``SafetyPolicy`` the user asked for."""
    from edgecloak.cloaker import SafetyPolicy

    retries = args.retries
    bundle = getattr(args, "bundle", None)
    if retries is None and bundle is not None:  # the retries of the preset the bundle was exported for
        from edgecloak.runtime.bundle import BundleManifest

        recipe = BundleManifest.read(bundle).recipe
        retries = recipe.retries if recipe is not None else 1
    elif retries is None:  # the preset's own budget (a progressive preset relies on its retries)
        from edgecloak.calibration.presets import preset

        name = getattr(args, "preset", None)
        retries = preset(name).retries if name else 1
    return SafetyPolicy(min_margin=args.min_margin, retries=retries, min_face=args.min_face, on_fail=args.on_fail)


def add_fan_out_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """Add --workers and --ray [ADDRESS] (local processes or Ray, see ``edgecloak.batch``)."""
    parser.add_argument("--workers", type=int, default=1, help=f"{what} in this many parallel workers (default 1)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run the workers on Ray; without ADDRESS a local Ray instance")


def fan_out_from(args: argparse.Namespace) -> dict[str, Any]:
    """{workers, ray, ray_address} from the flags (``UsageError`` for fewer than 1 worker)."""
    from edgecloak.errors import UsageError

    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    return {"workers": args.workers, "ray": args.ray is not None, "ray_address": args.ray or None}
