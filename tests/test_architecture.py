"""The floors of docs/design.md ("Floors") as import-linter contracts (``.importlinter``), checked
on every test run: runtime needs only the device install, export does not reach up into the apps,
the floors import downward only, and no package has import cycles between its modules.

import-linter (grimp) finds a package by walking one folder, but edgecloak is installed from four
(``package-dir`` in pyproject.toml: runtime/, export/ and calibration/ become subpackages), so the
contracts are checked on a copy of the ``.py`` files laid out as installed, in a subprocess whose
``PYTHONPATH`` puts that copy first. ``test_a_planted_violation_breaks_every_contract`` shows the
check can fail: it plants one violation per contract in such a copy.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
# run the CLI through this interpreter (the console script may not be on PATH)
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def installed_layout(dest: Path) -> Path:
    """Copy the package's ``.py`` files into ``dest`` as pip installs them; returns ``dest``."""
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in package_dirs.items():
        target = dest.joinpath(*package.split("."))
        for source in (ROOT / folder).rglob("*.py"):
            out = target / source.relative_to(ROOT / folder)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out)
    return dest


def contract_names() -> list[str]:
    config = configparser.ConfigParser()
    config.read(CONFIG)
    return [config[s]["name"] for s in config.sections() if s.startswith("importlinter:contract:")]


def lint(tree: Path) -> subprocess.CompletedProcess:
    assert importlib.util.find_spec("importlinter"), "import-linter is missing: pip install -e '.[dev]'"
    # COLUMNS: one line per contract in the report (import-linter wraps at the terminal's width)
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "400", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", "--no-logo", str(CONFIG)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def verdicts(done: subprocess.CompletedProcess) -> dict[str, str]:
    """{contract name: "KEPT" or "BROKEN"} from the report."""
    out = {}
    for line in done.stdout.splitlines():
        for name in contract_names():
            for verdict in ("KEPT", "BROKEN"):
                if line.startswith(f"{name} {verdict}"):
                    out[name] = verdict
    return out


def test_the_floors_hold(tmp_path):
    done = lint(installed_layout(tmp_path / "site"))
    report = done.stdout + done.stderr
    assert verdicts(done) == {name: "KEPT" for name in contract_names()}, report
    assert done.returncode == 0, report


def test_a_planted_violation_breaks_every_contract(tmp_path):
    tree = installed_layout(tmp_path / "site")
    planted = {
        # the device floor reaching for torch
        "runtime/planted_torch.py": "import torch\n",
        # export reaching up into the CLI (and so above the SDK)
        "export/planted_cli.py": "import edgecloak.cli.main\n",
        # the evaluation app importing calibration, which imports evaluation: a cycle between floors
        "evaluation/planted_cycle.py": "import edgecloak.calibration.budget_sweep\n",
        # a module on no floor (the floors contract lists every module of the package)
        "planted_unplaced.py": "",
    }
    for path, code in planted.items():
        (tree / "edgecloak" / path).write_text(code)
    done = lint(tree)
    report = done.stdout + done.stderr
    assert verdicts(done) == {name: "BROKEN" for name in contract_names()}, report
    assert done.returncode != 0
    for module in ("edgecloak.runtime.planted_torch", "edgecloak.export.planted_cli",
                   "edgecloak.evaluation.planted_cycle", "edgecloak.planted_unplaced"):
        assert module in report  # the report names the importer, so a failure says where to look
