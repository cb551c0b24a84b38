"""TIP-IM setting flags shared by the subcommands that run or export the loop.

The flags are built from ``TIPIMConfig``'s field metadata (a new setting is written there, once);
a flag the user did not type keeps the recipe's value (the preset's or the bundle's), so only what
the user typed overrides anything. ``recipe_from`` turns the flags into the one ``Recipe``.

Example:
    >>> import argparse; p = argparse.ArgumentParser(); add_settings_arguments(p)
    >>> settings_from(p.parse_args(["--steps", "20", "--no-diversity"]))
    {'steps': 20, 'diversity': None}
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from edgecloak.enrolment import DEFAULT_PROFILE_STEPS
from edgecloak.errors import UsageError
from edgecloak.policy import ON_FAIL_POLICIES, SafetyPolicy
from edgecloak.recipe import Recipe, resolve
from edgecloak.runtime.config import TIPIMConfig

_UNSET = object()  # what a flag the user did not type holds (None is a value: --no-diversity)


def _flag_kind(name: str) -> tuple[type, tuple[Any, ...] | None]:
    """The argparse type of a TIPIMConfig field, and its choices when it is a Literal."""
    hint = typing.get_type_hints(TIPIMConfig)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:  # X | None
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return str, typing.get_args(hint)
    return hint, None


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TIPIMConfig field that asks for one (--eps --steps ... --no-diversity), all
    defaulting to the recipe's value; the fields' metadata carries the help."""
    for f in fields(TIPIMConfig):
        text = f.metadata.get("cli_help")
        if text is None:
            continue
        if f.metadata.get("cli_switch_off"):
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_const", const=None,
                                default=_UNSET, help=text)
            continue
        kind, choices = _flag_kind(f.name)
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, choices=choices,
                            default=_UNSET, help=text)


def settings_from(args: argparse.Namespace) -> dict[str, Any]:
    """The TIPIMConfig fields the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(TIPIMConfig)
            if getattr(args, f.name, _UNSET) is not _UNSET}


def add_recipe_arguments(parser: argparse.ArgumentParser, default_preset: str | None = None,
                         bundle: bool = True) -> None:
    """Add --preset (and --bundle): where the recipe starts from (see ``edgecloak.recipe``)."""
    default = default_preset or "balanced"
    parser.add_argument("--preset", default=None, metavar="NAME",
                        help=f"surrogates, K, loop settings and retries to start from (default {default}; "
                             "fast / balanced / max are measured, paper / edge fixed)")
    if bundle:
        parser.add_argument("--bundle", type=Path, default=None,
                            help="a cloak bundle folder (edgecloak export) instead of the preset's cached one")


def recipe_from(args: argparse.Namespace, default_preset: str | None = None, policy: bool = True,
                **overrides: Any) -> Recipe:
    """The one ``Recipe`` the flags ask for: --preset / --bundle, the settings flags, the policy flags."""
    bundle = getattr(args, "bundle", None)
    preset = args.preset if args.preset is not None or bundle is not None else default_preset
    return resolve(preset, bundle, settings=settings_from(args),
                   policy=_policy_flags(args) if policy else None, **overrides)


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --profile NAME and --profile-steps N (``Cloaker.use_profile``)."""
    parser.add_argument("--profile", default=None, metavar="NAME",
                        help="start the enrolled user's faces from their cloak profile (edgecloak enroll)")
    parser.add_argument("--profile-steps", type=int, default=DEFAULT_PROFILE_STEPS, metavar="N",
                        help=f"refinement steps of a profile-started face (default {DEFAULT_PROFILE_STEPS}; 0: the "
                             "profile's mask as it is)")


def add_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add --on-fail --min-margin --retries --min-face (the self-check, see ``SafetyPolicy``); unset
    flags keep ``SafetyPolicy``'s defaults (and the recipe's retries)."""
    default = SafetyPolicy()
    parser.add_argument("--on-fail", choices=ON_FAIL_POLICIES, default=None,
                        help=f"a face that fails the self-check: drop the photo, hide the face under a mosaic, "
                             f"or keep it as is (default {default.on_fail})")
    parser.add_argument("--min-margin", type=float, default=None,
                        help="self-check: surrogate mean of cos(target) - cos(original) a face must exceed "
                             f"(default {default.min_margin:g})")
    parser.add_argument("--retries", type=int, default=None,
                        help="re-runs of a failing face, each with twice the steps (default: the preset's, or the one "
                             "a --bundle was exported for)")
    parser.add_argument("--min-face", type=int, default=None,
                        help=f"faces smaller than this (px) count as failed (default {default.min_face})")


def _policy_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The SafetyPolicy fields the user set (None: unset; ``resolve`` keeps the default, or for
    --retries the preset's or the bundle's)."""
    return {"min_margin": args.min_margin, "retries": args.retries, "min_face": args.min_face,
            "on_fail": args.on_fail}


def add_fan_out_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """Add --workers and --ray [ADDRESS] (local processes or Ray, see ``edgecloak.batch``)."""
    parser.add_argument("--workers", type=int, default=1, help=f"{what} in this many parallel workers (default 1)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run the workers on Ray; without ADDRESS a local Ray instance")


def fan_out_from(args: argparse.Namespace) -> dict[str, Any]:
    """{workers, ray, ray_address} from the flags (``UsageError`` for fewer than 1 worker)."""
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    return {"workers": args.workers, "ray": args.ray is not None, "ray_address": args.ray or None}
