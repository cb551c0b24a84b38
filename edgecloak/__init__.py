"""edgecloak: on-device face cloaking with TIP-IM adversarial identity masks.

Example:
    >>> from edgecloak import Cloaker, resolve          # doctest: +SKIP
    >>> Cloaker.from_recipe(resolve("fast")).protect_file("me.jpg", "cloaked/me.png")   # doctest: +SKIP
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
# name -> the module that defines it; loaded on first use, so `import edgecloak` (and so the CLI's
# start) stays light until the SDK is used
_SDK = {
    "Cloaker": "edgecloak.cloaker", "Result": "edgecloak.cloaker", "FaceReport": "edgecloak.cloaker",
    "WarmStart": "edgecloak.cloaker", "SafetyPolicy": "edgecloak.policy", "Recipe": "edgecloak.recipe",
    "resolve": "edgecloak.recipe",
}
__all__ = [*_SDK, "__version__"]


def __getattr__(name: str):
    if name in _SDK:
        return getattr(importlib.import_module(_SDK[name]), name)
    raise AttributeError(f"module 'edgecloak' has no attribute {name!r}")
