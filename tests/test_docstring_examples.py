"""The docstrings' examples are run, so an example a reader copies still does what it says.

Examples that need models, photos or a device are marked ``+SKIP`` in their docstring; the rest
run here against the real code of the torch-free package (``runtime`` and ``edgecloak``; the
torch side, ``export``, is exercised by its own tests).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("edgecloak.runtime", "edgecloak")


def _modules() -> list[str]:
    names = set()
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.add(package_name)
        for info in pkgutil.walk_packages(package.__path__, package_name + "."):
            if not info.name.startswith("edgecloak.export"):
                names.add(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # an optional extra (tensorrt, ray, a camera stack) this machine lacks
        pytest.skip(f"{name} needs what this machine lacks: {exc}")
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                                  report=True)
    assert failures == 0, f"{failures} docstring example(s) of {name} fail (run python -m doctest -v on it)"
