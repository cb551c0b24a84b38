"""Where the cached cloak bundles live, and reading one on a device (torch-free).

Without ``--bundle``, the SDK runs a preset on a bundle kept in ``$EDGECLOAK_HOME/bundles``. A
workstation exports it there on first use (``edgecloak.export.bundle.default_bundle``, which
also re-exports a stale one); a device without the export extra cannot, so it reads the cached
bundle as it is (verified, hashes included) or says, in one line, how to get one.

The folder name holds the preset (``fast`` and ``edge`` share a surrogate but not their
settings), the surrogates and K: ``fast-mobileface-k10``. Bundles made for no preset (explicit
surrogates, the default TIP-IM settings) drop the preset part: ``mobileface-k10``.

Example:
    >>> import os; os.environ["EDGECLOAK_HOME"] = "/tmp/ec"
    >>> cached_bundle_path(["mobileface"], 10, preset="fast").as_posix()
    '/tmp/ec/bundles/fast-mobileface-k10'
    >>> load_cached_bundle(["mobileface"], 10, preset="fast")   # doctest: +SKIP
    Traceback (most recent call last):
    ...
    edgecloak.errors.ModelError: no cloak bundle for preset fast in /tmp/ec/bundles ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from edgecloak.errors import ModelError

from .bundle import Bundle
from .paths import edgecloak_home


def bundle_cache_dir() -> Path:
    """``$EDGECLOAK_HOME/bundles``: the cached bundles, one folder each."""
    return edgecloak_home() / "bundles"


def cached_bundle_path(surrogates: Sequence[str], num_targets: int, preset: str | None = None,
                       with_torch: bool = False) -> Path:
    """The cache folder of the bundle for ``preset`` (or no preset) on these surrogates and K.

    Example:
        >>> cached_bundle_path(["mobileface", "faceres"], 10).name
        'mobileface+faceres-k10'
    """
    name = f"{'+'.join(surrogates)}-k{num_targets}{'-torch' if with_torch else ''}"
    return bundle_cache_dir() / (f"{preset}-{name}" if preset else name)


def load_cached_bundle(surrogates: Sequence[str], num_targets: int, preset: str | None = None,
                       custom_surrogates: bool = False) -> Bundle:
    """The cached bundle, verified, used as it is: what a device without the export extra runs.

    Raises ``ModelError`` with one line that says which bundle is missing (or why it is refused)
    and how to get one. ``custom_surrogates``: the surrogates are not the preset's own, so the
    suggested export command names them.

    Example:
        >>> load_cached_bundle(["mobileface"], 10, preset="fast").recipe   # doctest: +SKIP
        RecipeEntry(name='fast', retries=1)
    """
    path = cached_bundle_path(surrogates, num_targets, preset)
    if (path / "manifest.json").is_file():
        try:
            return Bundle.load(path)
        except ModelError as exc:
            problem = f"the cached one is refused: {exc}"
    else:
        problem = f"none in {path.parent}"
    what = f"preset {preset}" if preset else "surrogates " + ",".join(surrogates)
    command = f"edgecloak export{f' --preset {preset}' if preset else ''}"
    if custom_surrogates or not preset:
        command += f" --surrogates {','.join(surrogates)}"
    if not preset:  # a preset's bundle has the preset's K
        command += f" -k {num_targets}"
    raise ModelError(f"no cloak bundle for {what} ({problem}); export one on a workstation with "
                     f"`{command} -o DIR` and pass --bundle DIR, or install the export extra here: "
                     "pip install 'edgecloak[export]'")
