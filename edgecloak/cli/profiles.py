"""``edgecloak enroll PHOTO... --name NAME`` and ``edgecloak profiles list|remove``: per-user cloak profiles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from edgecloak.cloaker import Cloaker
from edgecloak.enrolment import ENROL_PASSES, PROFILE_MASKS
from edgecloak.runtime.backends import BACKENDS
from edgecloak.runtime.profile import list_profiles, profiles_dir, remove_profile

from .settings import add_recipe_arguments, recipe_from


class EnrollCommand:
    """Enrol a user once from several photos of them: a cloak profile their photos then start from
    (`protect --profile NAME`). It holds the user's face template (biometric data), owner-only,
    under $EDGECLOAK_HOME/profiles; the photos are not kept."""

    @staticmethod
    def register(sub: argparse._SubParsersAction) -> None:
        p = sub.add_parser("enroll", help="make a user's cloak profile from photos of them",
                           description=EnrollCommand.__doc__)
        p.add_argument("photos", nargs="+", type=Path, help="photos of the user (the largest face of each; >= 2)")
        p.add_argument("--name", required=True, help="the profile's name (letters, digits, _ . -)")
        add_recipe_arguments(p)
        p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS), help="what runs the surrogates")
        p.add_argument("--passes", type=int, default=ENROL_PASSES, help=f"rounds over the photos (default {ENROL_PASSES})")
        p.add_argument("--steps", dest="enrol_steps", type=int, default=None,
                       help="iterations per photo and round (default: the preset's)")
        p.add_argument("--masks", type=int, default=PROFILE_MASKS,
                       help=f"masks, each towards its own target; a photo starts from one drawn at random, so the "
                            f"user's photos do not all carry one pattern (default {PROFILE_MASKS})")
        p.set_defaults(handler=EnrollCommand.run)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        cloaker = Cloaker.from_recipe(recipe_from(args, policy=False), args.backend)
        print(f"backend: {cloaker.backend}")
        with tqdm(total=args.masks * args.passes * len(args.photos), desc=f"enrolling {args.name}", unit="loop") as bar:
            profile = cloaker.enroll(args.photos, args.name, passes=args.passes, steps=args.enrol_steps,
                                     masks=args.masks, progress=lambda done, total: bar.update(done - bar.n))
        print(f"profile {profile.name}: {profile.photos} photos, targets {', '.join(profile.targets)}, saved in "
              f"{profiles_dir() / profile.name} (owner-only; remove with `edgecloak profiles remove {profile.name}`)")
        return 0


class ProfilesCommand:
    """List or remove the cloak profiles kept on this machine."""

    @staticmethod
    def register(sub: argparse._SubParsersAction) -> None:
        parser = sub.add_parser("profiles", help="list or remove cloak profiles", description=ProfilesCommand.__doc__)
        verbs = parser.add_subparsers(dest="verb", required=True)
        listing = verbs.add_parser("list", help="the profiles on this machine")
        listing.add_argument("--json", action="store_true", help="machine-readable output")
        listing.set_defaults(handler=ProfilesCommand.list)
        remove = verbs.add_parser("remove", help="delete a profile (its masks and face template) for good")
        remove.add_argument("name")
        remove.set_defaults(handler=ProfilesCommand.remove)

    @staticmethod
    def list(args: argparse.Namespace) -> int:
        rows = list_profiles()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print(f"no cloak profiles in {profiles_dir()}")
        for row in rows:
            if "error" in row:
                print(f"{row['name']:<16} unreadable: {row['error']}")
            else:
                print(f"{row['name']:<16} {row['photos']} photos, {'+'.join(row['surrogates'])}, eps {row['eps']:g}, "
                      f"targets {', '.join(row['targets'])}, {row['created']}")
        return 0

    @staticmethod
    def remove(args: argparse.Namespace) -> int:
        print(f"removed {remove_profile(args.name)}")
        return 0
