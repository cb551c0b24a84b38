"""``edgecloak`` command line: one small module per subcommand; each only parses and calls the SDK.

Example:
    $ edgecloak protect photo.jpg -o out/
    $ edgecloak models fetch
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from edgecloak import __version__
from edgecloak.errors import EdgecloakError

from . import batch, bench, calibrate, evaluate, export, models, profiles, protect, run

COMMANDS = (protect.ProtectCommand, batch.BatchCommand, run.RunCommand, export.ExportCommand, bench.BenchCommand,
            evaluate.EvalCommand, calibrate.CalibrateCommand, models.ModelsCommand, profiles.EnrollCommand,
            profiles.ProfilesCommand)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgecloak", description="Cloak faces in photos with TIP-IM identity masks.")
    parser.add_argument("--version", action="version", version=f"edgecloak {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, the error's exit_code on a typed error)."""
    for stream in (sys.stdout, sys.stderr):
        # a file name that is not valid UTF-8 (an old camera card, a Windows share) must print, not crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except EdgecloakError as err:
        print(f"edgecloak: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("edgecloak: interrupted; nothing partial was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
