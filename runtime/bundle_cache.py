"""Where the cached cloak bundles live, and reading one on a device (torch-free).

Without ``--bundle``, the SDK runs a preset on a bundle kept in ``$EDGECLOAK_HOME/bundles``. A
workstation exports it there on first use (``edgecloak.export.bundle.default_bundle``, which
also re-exports a stale one); a device without the export extra cannot, so it reads the cached
bundle as it is (verified, hashes included) or says, in one line, how to get one.

The folder name holds the preset (``fast`` and ``edge`` share a surrogate but not their
settings), the surrogates and K: ``fast-mobileface-k10``. Bundles made for no preset (explicit
surrogates, the default TIP-IM settings) drop the preset part: ``mobileface-k10``. A device trusts
the name only as far as the manifest agrees with it: a cached bundle whose recorded preset
(``recipe``), surrogates or K differ from what its folder name says (a renamed or swapped folder)
is refused, since it would run another preset's settings under this one's name.

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
                       with_torch: bool = False, feature_keep: bool = False) -> Path:
    """The cache folder of the bundle for ``preset`` (or no preset) on these surrogates and K
    (``feature_keep``: its gradient graphs take the feature dropout input).

    Example:
        >>> cached_bundle_path(["mobileface", "faceres"], 10).name
        'mobileface+faceres-k10'
        >>> cached_bundle_path(["mobileface"], 10, "fast", feature_keep=True).name
        'fast-mobileface-k10-dropout'
    """
    name = f"{'+'.join(surrogates)}-k{num_targets}{'-torch' if with_torch else ''}{'-dropout' if feature_keep else ''}"
    return bundle_cache_dir() / (f"{preset}-{name}" if preset else name)


def load_cached_bundle(surrogates: Sequence[str], num_targets: int, preset: str | None = None,
                       custom_surrogates: bool = False, feature_keep: bool = False) -> Bundle:
    """The cached bundle, verified, used as it is: what a device without the export extra runs.

    Raises ``ModelError`` with one line that says which bundle is missing (or why it is refused)
    and how to get one. ``custom_surrogates``: the surrogates are not the preset's own, so the
    suggested export command names them.

    Example:
        >>> load_cached_bundle(["mobileface"], 10, preset="fast").recipe   # doctest: +SKIP
        RecipeEntry(name='fast', retries=1)
    """
    path = cached_bundle_path(surrogates, num_targets, preset, feature_keep=feature_keep)
    if (path / "manifest.json").is_file():
        try:
            bundle = Bundle.load(path)
        except ModelError as exc:
            problem = f"the cached one is refused: {exc}"
        else:
            mismatch = _mismatch(bundle, surrogates, num_targets, preset, feature_keep)
            if mismatch is None:
                return bundle
            problem = (f"the cached one in {path} is refused: its manifest does not match its folder name "
                       f"({mismatch}: a renamed or swapped folder); remove it")
    else:
        problem = f"none in {path.parent}"
    what = f"preset {preset}" if preset else "surrogates " + ",".join(surrogates)
    command = f"edgecloak export{f' --preset {preset}' if preset else ''}"
    if custom_surrogates or not preset:
        command += f" --surrogates {','.join(surrogates)}"
    if not preset:  # a preset's bundle has the preset's K
        command += f" -k {num_targets}"
    if feature_keep:
        command += " --feature-dropout P"
        what += " with feature dropout"
    raise ModelError(f"no cloak bundle for {what} ({problem}); export one on a workstation with "
                     f"`{command} -o DIR` and pass --bundle DIR, or install the export extra here: "
                     "pip install 'edgecloak[export]'")


def _mismatch(bundle: Bundle, surrogates: Sequence[str], num_targets: int, preset: str | None,
              feature_keep: bool = False) -> str | None:
    """What in ``bundle``'s manifest differs from the preset, surrogates and K asked for; None when all agree.

    Example:
        >>> fast = Bundle.load(cached_bundle_path(["mobileface"], 10, "fast"))   # doctest: +SKIP
        >>> _mismatch(fast, ["mobileface"], 10, "edge")                          # doctest: +SKIP
        'preset fast where the name says edge'
    """
    m = bundle.manifest
    recorded = m.recipe.name if m.recipe is not None else None
    ids = [s.id for s in m.surrogates]
    differences = []
    if recorded != preset:
        differences.append(f"preset {recorded or '(none)'} where the name says {preset or '(none)'}")
    if ids != list(surrogates):
        differences.append(f"surrogates {','.join(ids)} where the name says {','.join(surrogates)}")
    if m.num_targets != num_targets:
        differences.append(f"K {m.num_targets} where the name says {num_targets}")
    if feature_keep and not all(s.feature_keep_size for s in m.surrogates):
        differences.append("gradient graphs without the feature dropout input where the name says -dropout")
    return "; ".join(differences) or None
