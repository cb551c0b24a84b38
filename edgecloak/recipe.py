"""One recipe: the surrogates, loop settings and self-check a protection runs with, resolved once.

Every entry point (the SDK, every CLI subcommand, batch workers, the camera hook, evaluation,
calibration, export and the bench) turns "a preset or a bundle, plus what the user overrode" into
a ``Recipe`` through ``resolve``, and nowhere else:

* a **preset** (``edgecloak.presets``) gives surrogates, K, the ``TIPIMConfig`` fields it changes
  and its self-check retries; the bundle it runs on is the cached one for that recipe;
* a **bundle** folder carries its own: surrogates and K fixed in its graphs, the TIP-IM settings it
  was exported with, and the preset (and retries) it was made for, if any;
* **overrides**: ``TIPIMConfig`` fields, other surrogates (a preset only), another K (a preset
  only), and ``SafetyPolicy`` fields. A field left out keeps the preset's or bundle's value; the
  defaults themselves live once, in ``TIPIMConfig`` and ``SafetyPolicy``.

Bad input (an unknown preset or setting, a value out of range, an override a bundle cannot take)
is one ``UsageError`` line; a bundle that does not verify is a ``ModelError``.

Example:
    >>> recipe = resolve("fast", settings={"steps": 12}, policy={"on_fail": "keep"})
    >>> recipe.surrogates, recipe.config.steps, recipe.config.alpha, recipe.policy.retries
    (('mobileface',), 12, 2.0, 1)
    >>> resolve("fast", settings={"stpes": 12})
    Traceback (most recent call last):
    ...
    edgecloak.errors.UsageError: unknown TIP-IM setting 'stpes'; known: eps, steps, alpha, mu, norm, ...
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgecloak.errors import UsageError
from edgecloak.policy import SafetyPolicy
from edgecloak.presets import DEFAULT_PRESET, preset as named_preset
from edgecloak.runtime.bundle import Bundle, BundleManifest, RecipeEntry, preset_from_json
from edgecloak.runtime.bundle_cache import load_cached_bundle
from edgecloak.runtime.config import TIPIMConfig


@dataclass(frozen=True)
class Recipe:
    """What one protection runs with (plain, picklable data: it travels to batch workers).

    ``config`` is the full loop settings; ``num_targets`` is K of the gradient graphs; ``entry`` the preset it came from with the
    preset's own retries (what a bundle exported for it records), or None; ``bundle`` a given bundle
    folder, or None for the preset's cached bundle.

    Example:
        >>> r = resolve("edge")
        >>> (r.preset, r.num_targets, r.config.steps, r.bundle)
        ('edge', 10, 16, None)
        >>> r.entry
        RecipeEntry(name='edge', retries=1)
        >>> resolve("edge", policy={"retries": 3}).entry.retries   # what the preset records, not the override
        1
    """

    surrogates: tuple[str, ...]
    num_targets: int
    config: TIPIMConfig
    policy: SafetyPolicy
    entry: RecipeEntry | None = None  # the preset it came from and the preset's own retries
    bundle: Path | None = None
    # the TIPIMConfig fields as written: the preset's, then the overrides (a bundle: the overrides
    # only, the rest is in the bundle); what reports and batch manifests record
    settings: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def preset(self) -> str | None:
        """The name of the preset it came from (a bundle's: the one it was exported for), or None."""
        return None if self.entry is None else self.entry.name


def resolve(
    preset: str | None = None,
    bundle: str | os.PathLike[str] | None = None,
    *,
    surrogates: Sequence[str] | None = None,
    num_targets: int | None = None,
    settings: Mapping[str, Any] | None = None,
    policy: SafetyPolicy | Mapping[str, Any] | None = None,
) -> Recipe:
    """The recipe for ``preset`` (default ``balanced``) or ``bundle``, with the overrides applied.

    ``settings``: ``TIPIMConfig`` fields; ``policy``: a whole ``SafetyPolicy``, or some of its fields
    (``None`` values are ignored, so CLI flags left unset keep the recipe's). Without a ``retries``
    override a photo gets the preset's retries, or those the bundle was exported with.

    Example:
        >>> resolve("paper", surrogates=["mobileface"]).surrogates
        ('mobileface',)
        >>> resolve(bundle="bundles/edge").preset          # doctest: +SKIP
        'edge'
    """
    if bundle is not None:
        if preset is not None:
            raise UsageError("--preset and --bundle: a bundle carries its own preset; pass one of them")
        if surrogates:
            raise UsageError("--surrogates is fixed by the bundle; export another bundle to change it")
        if num_targets is not None:
            raise UsageError("-k is fixed in the bundle's graphs; export another bundle to change it")
        root = Path(bundle).expanduser()
        manifest = BundleManifest.read(root)
        base = preset_from_json(manifest.read_file(root, manifest.preset), f"{root}/{manifest.preset}")
        ids, k, entry = tuple(s.id for s in manifest.surrogates), manifest.num_targets, manifest.recipe
        written = dict(settings or {})
    else:
        chosen = named_preset(preset or DEFAULT_PRESET)
        base = _config(chosen.settings)
        written = {**chosen.settings, **(settings or {})}
        ids = tuple(surrogates) if surrogates else chosen.surrogates
        k = chosen.num_targets if num_targets is None else num_targets
        entry, root = RecipeEntry(chosen.name, chosen.retries), None
        if not ids or not all(isinstance(s, str) and s for s in ids):
            raise UsageError(f"surrogates must be recognizer names, got {list(ids)!r}")
        if k < 1:
            raise UsageError(f"the number of targets must be >= 1, got {k}")
    try:  # a bad value is the caller's input: one clear line, not a traceback from deep inside
        config = replace(base, **_checked(settings)) if settings else base
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return Recipe(ids, k, config, _policy(policy, None if entry is None else entry.retries), entry, root, written)


def setting_names() -> tuple[str, ...]:
    """The ``TIPIMConfig`` fields an override may name."""
    return tuple(f.name for f in fields(TIPIMConfig))


def _checked(settings: Mapping[str, Any]) -> dict[str, Any]:
    unknown = [k for k in settings if k not in setting_names()]
    if unknown:
        raise UsageError(f"unknown TIP-IM setting {unknown[0]!r}; known: {', '.join(setting_names())}")
    return dict(settings)


def _config(settings: Mapping[str, Any]) -> TIPIMConfig:
    try:  # a bad value is the caller's input: one clear line, not a traceback from deep inside
        return TIPIMConfig(**_checked(settings))
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _policy(policy: SafetyPolicy | Mapping[str, Any] | None, retries: int | None) -> SafetyPolicy:
    if isinstance(policy, SafetyPolicy):
        return policy
    chosen = {k: v for k, v in (policy or {}).items() if v is not None}
    unknown = [k for k in chosen if k not in {f.name for f in fields(SafetyPolicy)}]
    if unknown:
        raise UsageError(f"unknown self-check setting {unknown[0]!r}")
    if retries is not None:
        chosen.setdefault("retries", retries)
    return SafetyPolicy(**chosen)


def bundle_for(recipe: Recipe, with_torch: bool = False) -> Bundle:
    """The bundle ``recipe`` runs on, loaded and verified: its own folder, or the cached one.

    Without a bundle folder: a workstation (the export extra installed) exports the recipe's bundle
    into ``$EDGECLOAK_HOME/bundles`` on first use and again when it is stale (with torch programs
    when ``with_torch``); a device runs the cached bundle as it is, or gets one ``ModelError`` line
    saying how to get one. The cached bundle holds the preset's own settings: overrides are applied
    when it runs, so changing ``--steps`` never re-exports anything. The one exception is feature
    dropout (``feature_dropout`` > 0): it needs gradient graphs with the feature_keep input, which
    live in a bundle of their own (``...-dropout``).

    Example:
        >>> bundle_for(resolve("fast")).root.name          # doctest: +SKIP
        'fast-mobileface-k10'
    """
    if recipe.bundle is not None:
        return Bundle.load(recipe.bundle)
    stored = _config(named_preset(recipe.preset).settings) if recipe.preset else TIPIMConfig()
    # feature dropout needs gradient graphs with its input, which cost time on every call: a bundle
    # of its own, only for recipes that drop features
    dropping = recipe.config.feature_dropout > 0
    if export_extra_installed():
        # optional: the export extra (torch, onnx); a device never imports it
        from edgecloak.export.bundle import load_default_bundle

        return load_default_bundle(list(recipe.surrogates), recipe.num_targets, with_torch,
                                   config=stored, recipe=recipe.entry, feature_keep=dropping)
    custom = recipe.preset is None or recipe.surrogates != named_preset(recipe.preset).surrogates
    return load_cached_bundle(list(recipe.surrogates), recipe.num_targets, recipe.preset, custom_surrogates=custom,
                              feature_keep=dropping)


def export_extra_installed() -> bool:
    """Can this machine export bundles (torch and onnx importable)? Asked without importing them."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("torch", "onnx"))
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses them
        return False
