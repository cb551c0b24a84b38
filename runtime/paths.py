"""Where edgecloak keeps its caches (models, exported graphs, TensorRT engines).

Example:
    >>> import os; os.environ["EDGECLOAK_HOME"] = "/tmp/ec"; str(edgecloak_home())
    '/tmp/ec'
"""

from __future__ import annotations

import os
from pathlib import Path


def edgecloak_home() -> Path:
    """The cache root: ``$EDGECLOAK_HOME``, else ``$XDG_CACHE_HOME/edgecloak``, else ``~/.cache/edgecloak``."""
    env = os.environ.get("EDGECLOAK_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgecloak"
