"""Write a cloak bundle: everything the torch-free runtime needs, hashed into one manifest.

Workstation side of the export -> bundle -> runtime flow (the runtime side is
``edgecloak.runtime.bundle``, which documents the layout). Exported graphs are cached under
``$EDGECLOAK_HOME/graphs`` keyed by the converted weights, exporter, torch version, K and opset,
so re-exporting a bundle (or the test suite doing it) costs seconds, not minutes.

The manifest is built and written through ``edgecloak.runtime.bundle.BundleManifest`` (the one
writer; the runtime reads it back with the same class). ``default_bundle(..., recipe=...)`` keeps
one bundle per preset in the cache, exported with the preset's own settings and recording the
preset's name and self-check retries (``recipe``), so it runs the same with or without
``--bundle``.

Example:
    >>> from edgecloak.export.bundle import export_bundle
    >>> export_bundle("bundles/edge", surrogates=["mobileface"], preset=TIPIMConfig(steps=20))  # doctest: +SKIP
    >>> default_bundle(["mobileface"], 10).name                                                 # doctest: +SKIP
    'mobileface-k10'
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import onnx
import torch

import edgecloak
from edgecloak.errors import ModelError, OutputError, UsageError
from edgecloak.runtime.atomic import staged_file
from edgecloak.runtime.bundle import MANIFEST, Bundle, BundleManifest, RecipeEntry, SurrogateEntry, preset_from_json
from edgecloak.runtime.bundle_cache import cached_bundle_path
from edgecloak.runtime.config import TIPIMConfig
from edgecloak.runtime.detect.mtcnn import MTCNNDetector
from edgecloak.runtime.paths import edgecloak_home

from .gradgraph import (EXPORTER_VERSION, check_tensorrt_ops, export_embedding_graph, export_gradient_graph,
                        feature_map_sizes, quiet_exporter)
from .recognizers import Recognizer
from .reference.targets import default_target_bank, target_bank_from_photos
from .zoo.registry import converted_manifest, default_surrogates, ensure_detector

Progress = Callable[[str], None]
# ONNX opsets a bundle may ask for: 17 is the default (TensorRT 8.5/8.6); the torch exporter's
# own opset is 18, and later ones are up to TensorRT 10. Anything else is refused before any work.
SUPPORTED_OPSETS = (17, 18, 19, 20)


def _graph_key(model_id: str, kind: str, size: int, opset: int) -> str:
    """Cache key of an exported graph: converted weights, converter, exporter, torch, kind, size, opset."""
    manifest = converted_manifest(model_id)
    facts = [manifest["source_sha256"], manifest["converter_version"], EXPORTER_VERSION, torch.__version__,
             kind, size, opset]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def graph_keys(model_id: str, num_targets: int, opset: int, feature_keep: bool = False) -> dict[str, str]:
    """The cache keys of one surrogate's graphs in a bundle with K = ``num_targets``: the K gradient
    graph, the embedding graph and, when K > 1, the single-target gradient graph (``held_grad``);
    with ``feature_keep``, gradient graphs that take the feature dropout input (kind ``grad-keep``)."""
    grad = "grad-keep" if feature_keep else "grad"
    keys = {"grad": _graph_key(model_id, grad, num_targets, opset),
            "embed": _graph_key(model_id, "embed", num_targets, opset)}
    if num_targets > 1:
        keys["held_grad"] = _graph_key(model_id, grad, 1, opset)
    return keys


def cached_graph(rec: Recognizer, kind: str, size: int, opset: int = 17) -> Path:
    """The exported ``grad`` (K = size), ``grad-keep`` (the same with the feature_keep input) or
    ``embed`` (max batch = size) graph, from the cache if current."""
    path = edgecloak_home() / "graphs" / rec.id / f"{_graph_key(rec.id, kind, size, opset)}.{kind}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(path) as tmp:
        if kind in ("grad", "grad-keep"):
            export_gradient_graph(rec, tmp, num_targets=size, opset=opset, feature_keep=kind == "grad-keep")
        elif kind == "embed":
            export_embedding_graph(rec, tmp, max_batch=size, opset=opset)
        else:
            raise ValueError(f"unknown graph kind {kind!r}")
        # the exporter may quietly write another opset than asked; a bundle must not claim one it lacks
        written = {o.domain: o.version for o in onnx.load(str(tmp), load_external_data=False).opset_import}
        if written.get("", written.get("ai.onnx")) != opset:
            raise UsageError(f"--opset {opset}: the exporter wrote opset {written.get('', '?')} instead; "
                             f"use an opset it supports ({', '.join(map(str, SUPPORTED_OPSETS))})")
    return path


def export_bundle(
    out_dir: str | os.PathLike[str],
    surrogates: Sequence[str] | None = None,
    preset: TIPIMConfig | None = None,
    num_targets: int = 10,
    target_photos: Sequence[str | os.PathLike[str]] = (),
    opset: int = 17,
    with_torch: bool = False,
    force: bool = False,
    progress: Progress | None = None,
    recipe: RecipeEntry | None = None,
    feature_keep: bool | None = None,
) -> Path:
    """Export surrogates, detector, targets and preset into ``out_dir`` (written atomically).

    ``num_targets`` is K, fixed in the gradient graphs (the runtime may use fewer, never more).
    ``feature_keep``: gradient graphs with the feature dropout input (default: when the preset
    drops features; they cost about a tenth more time per call, so only then).
    ``with_torch`` adds a ``torch.export`` program per surrogate for the runtime's torch backend.
    ``recipe`` records the named preset ``preset`` comes from (name, self-check retries).
    An existing ``out_dir`` is replaced only with ``force``.

    Example:
        >>> export_bundle("bundles/fast", ["mobileface"], TIPIMConfig(steps=8, alpha=2.0),
        ...               recipe=RecipeEntry("fast", 1))                             # doctest: +SKIP
        PosixPath('bundles/fast')
    """
    out = Path(out_dir).expanduser()
    say = progress or (lambda _msg: None)
    if out.exists() and not force:
        raise OutputError(f"{out}: already exists; choose another folder or pass --force to replace it")
    if out.exists():
        _check_replaceable(out)
    if num_targets < 1:
        raise UsageError(f"the number of targets must be >= 1, got {num_targets}")
    if opset not in SUPPORTED_OPSETS:
        raise UsageError(f"--opset {opset} is not supported; choose one of {', '.join(map(str, SUPPORTED_OPSETS))} "
                         "(17 for TensorRT 8.5/8.6)")
    preset = preset or TIPIMConfig()
    preset_json = json.dumps(preset.to_dict(), indent=2, sort_keys=True)
    preset_from_json(preset_json.encode(), "the preset")  # refuse now what the runtime would refuse later
    ids = list(surrogates) if surrogates else default_surrogates()
    if feature_keep is None:
        feature_keep = preset.feature_dropout > 0
    grad_kind = "grad-keep" if feature_keep else "grad"
    started = time.perf_counter()

    staging = out.with_name(f".{out.name}.exporting")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "surrogates").mkdir(parents=True)
        recognizers = []
        entries = []
        for model_id in ids:
            rec = Recognizer.load(model_id)
            recognizers.append(rec)
            say(f"exporting {model_id} (gradient graph{f's, K={num_targets} and 1' if num_targets > 1 else ', K=1'})")
            grad = cached_graph(rec, grad_kind, num_targets, opset)
            embed = cached_graph(rec, "embed", num_targets, opset)
            # the steps towards one held target (most of a preset's steps) cost one VJP, not K
            held = cached_graph(rec, grad_kind, 1, opset) if num_targets > 1 else None
            entry = SurrogateEntry(
                id=model_id,
                input_size=rec.input_size,
                crop_scale=float(rec.spec.crop_scale),
                preprocess=rec.spec.preprocess,  # inside the graphs; recorded for the record
                embedding_dim=rec.spec.embedding_dim,
                max_batch=num_targets,
                grad_graph=f"surrogates/{model_id}.grad.onnx",
                embed_graph=f"surrogates/{model_id}.embed.onnx",
                shapes={"x": [1, 3, rec.input_size, rec.input_size], "cotangents": [1, num_targets, rec.spec.embedding_dim],
                        "embedding": [1, rec.spec.embedding_dim], "grad": [1, num_targets, 3, rec.input_size, rec.input_size],
                        "embed_x": ["batch", 3, rec.input_size, rec.input_size],
                        **({"feature_keep": [1, sum(feature_map_sizes(rec))]} if feature_keep else {})},
                source_sha256=converted_manifest(model_id)["source_sha256"],
                # what the graphs were exported from (weights, converter, exporter, torch, K, opset)
                graph_keys=graph_keys(model_id, num_targets, opset, feature_keep),
                tensorrt_unsupported_ops=check_tensorrt_ops(grad, "8.5"),
                held_grad_graph=f"surrogates/{model_id}.grad1.onnx" if held else None,
            )
            shutil.copyfile(grad, staging / entry.grad_graph)
            shutil.copyfile(embed, staging / entry.embed_graph)
            if held:
                shutil.copyfile(held, staging / entry.held_grad_graph)
            if with_torch:
                say(f"exporting {model_id} (torch program)")
                entry.extra["torch"] = f"surrogates/{model_id}.pt2"
                _export_torch_program(rec, staging / entry.extra["torch"], num_targets)
            entries.append(entry)

        say("copying the detector")
        det_src = ensure_detector()
        (staging / "detector").mkdir()
        for name in ("pnet.onnx", "rnet.onnx", "onet.onnx"):
            shutil.copyfile(det_src / name, staging / "detector" / name)

        say("embedding the target identities")
        detector = MTCNNDetector.from_dir(staging / "detector")
        if target_photos:
            bank = target_bank_from_photos(recognizers, detector, [Path(p) for p in target_photos])
        else:
            bank = default_target_bank(recognizers, detector)
        bank = bank.select(range(min(num_targets, bank.size)))
        bank.save(staging / "targets.npz")
        (staging / "preset.json").write_text(preset_json)

        manifest = BundleManifest(
            num_targets=num_targets,
            surrogates=entries,
            files={},
            targets="targets.npz",
            preset="preset.json",
            detector_name="mtcnn",
            detector_dir="detector",
            recipe=recipe,
            target_identities=[str(t) for t in bank.identities],
            opset=opset,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            versions={"edgecloak": edgecloak.__version__, "exporter": EXPORTER_VERSION, "torch": torch.__version__,
                      "onnx": onnx.__version__},
        )
        manifest.hash_files(staging)
        manifest.export_seconds = round(time.perf_counter() - started, 1)
        manifest.write(staging)
        _swap_in(staging, out)
    except BaseException as exc:  # Ctrl-C, a full or read-only disk: leave no half bundle behind
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{out}: could not write the bundle ({exc.strerror or exc}); check free space and "
                              "that the folder is writable") from exc
        raise
    return out


def _check_replaceable(out: Path) -> None:
    """``--force`` replaces a bundle, nothing else: a folder without a readable bundle manifest, or
    with files its manifest does not list (someone's notes, another project), is refused."""
    try:
        manifest = BundleManifest.read(out)
    except ModelError:
        raise OutputError(f"{out}: exists and is not a cloak bundle; refusing to replace it") from None
    for path in out.rglob("*"):
        rel = path.relative_to(out).as_posix()
        if (path.is_file() or path.is_symlink()) and rel != MANIFEST and rel not in manifest.files:
            raise OutputError(f"{out}: holds {rel}, which is not part of the bundle; refusing to replace it "
                              "(move it away or choose another folder)")


def _swap_in(staging: Path, out: Path) -> None:
    """Put the finished bundle at ``out``; an old one is moved aside first and removed only after,
    so an interruption leaves the old bundle or the new one, never neither."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.with_name(f".{out.name}.replaced")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def default_bundle(surrogates: Sequence[str] | None = None, num_targets: int | None = None,
                   with_torch: bool = False, config: TIPIMConfig | None = None,
                   recipe: RecipeEntry | None = None, feature_keep: bool = False) -> Path:
    """The cached bundle's folder, exported on first use; see ``load_default_bundle``.

    Example:
        >>> default_bundle(["mobileface"], 10).name      # doctest: +SKIP
        'mobileface-k10'
    """
    return load_default_bundle(surrogates, num_targets, with_torch, config, recipe, feature_keep).root


def load_default_bundle(surrogates: Sequence[str] | None = None, num_targets: int | None = None,
                        with_torch: bool = False, config: TIPIMConfig | None = None,
                        recipe: RecipeEntry | None = None, feature_keep: bool = False) -> Bundle:
    """The cached bundle, loaded and verified; exported into the cache when missing or stale.

    ``config`` is the TIP-IM settings the bundle stores (default ``TIPIMConfig()``); ``recipe`` the
    preset it is made for (name and self-check retries), which also names its cache folder.
    ``feature_keep``: gradient graphs with the feature dropout input (a folder of its own).
    Presets are resolved by the caller (``edgecloak.recipe.bundle_for`` does it for a recipe).
    Defaults: the default surrogates, K 10. Lives in ``$EDGECLOAK_HOME/bundles``
    (``runtime.bundle_cache.cached_bundle_path``); exported again when it no longer verifies or is
    not current (``is_current``).

    Example:
        >>> load_default_bundle(["mobileface"], 10, config=TIPIMConfig(steps=8),
        ...                     recipe=RecipeEntry("fast", 1)).root.name          # doctest: +SKIP
        'fast-mobileface-k10'
    """
    config = config or TIPIMConfig()
    ids = list(surrogates) if surrogates else default_surrogates()
    k = num_targets or 10
    path = cached_bundle_path(ids, k, None if recipe is None else recipe.name, with_torch, feature_keep)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several processes may ask for the same bundle at once
        if path.exists():
            try:
                # verified here too (not only when the runtime loads it): a damaged cache re-exports
                bundle = Bundle.load(path)
                if is_current(bundle, ids, k, config, recipe, feature_keep):
                    return bundle
            except (ModelError, KeyError):  # KeyError: a converted model's own manifest lacks a field
                pass  # stale or damaged: export again
            shutil.rmtree(path)
        export_bundle(path, ids, config, num_targets=k, with_torch=with_torch, recipe=recipe, feature_keep=feature_keep)
        return Bundle.load(path)


def is_current(bundle: Bundle, surrogates: Sequence[str], num_targets: int, config: TIPIMConfig | None = None,
               recipe: RecipeEntry | None = None, feature_keep: bool = False) -> bool:
    """Is this the bundle asked for (surrogates, K, settings, recipe, graphs with or without the
    feature dropout input), with graphs exported from today's weights, converters, exporter and torch?

    Example:
        >>> is_current(Bundle.load(default_bundle(preset="fast")), ["mobileface"], 10)   # doctest: +SKIP
        True
    """
    m = bundle.manifest
    if [s.id for s in m.surrogates] != list(surrogates) or m.num_targets != num_targets or m.opset is None:
        return False
    if (config is not None and bundle.preset != config) or m.recipe != recipe:
        return False
    return all(entry.graph_keys == graph_keys(entry.id, num_targets, m.opset, feature_keep) for entry in m.surrogates)


def _export_torch_program(rec: Recognizer, path: Path, max_batch: int) -> None:
    """A ``torch.export`` program of the recognizer (dynamic batch) for the runtime's torch backend."""
    s = rec.input_size
    batch = torch.export.Dim("batch", min=1, max=max(2, max_batch))
    with quiet_exporter():  # torch.export warns about weight grouping and pytree internals
        program = torch.export.export(rec.eval(), (torch.zeros(2, 3, s, s),), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
