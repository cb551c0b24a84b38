"""How measuring subcommands print: the JSON, a blank line, the table; the JSON also to a file if asked.

Example:
    >>> print_report({"a": 1}, "| a |", None)   # doctest: +NORMALIZE_WHITESPACE
    {
      "a": 1
    }
    <BLANKLINE>
    | a |
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def print_report(report: Any, table: str, json_path: Path | None) -> None:
    """JSON + table in the same run (speed is compared side by side, never asserted)."""
    text = json.dumps(report, indent=2)
    print(text)
    print()
    print(table)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text)
