"""The cloak bundle: the unit of deployment, read and verified by the runtime.

A bundle is a folder written by ``edgecloak export`` (``edgecloak.export.bundle``)::

    bundle/
      manifest.json                what follows, with the sha256 of every file
      surrogates/<id>.grad.onnx    (x [1,3,S,S], cotangents [1,K,D]) -> (embedding, grad); in bundles
                                   whose preset drops features, a third input feature_keep [1,F]
                                   (the convolution outputs' multipliers, shapes.feature_keep)
      surrogates/<id>.grad1.onnx   the same with K = 1: the loop's steps towards one held target
                                   (optional; without it those steps run the K graph)
      surrogates/<id>.embed.onnx   x [B,3,S,S] -> embedding [B,D]
      surrogates/<id>.pt2          optional: torch.export program (torch backend only)
      detector/{pnet,rnet,onet}.onnx
      targets.npz                  target identities and their embeddings per surrogate
      preset.json                  the TIP-IM settings the bundle was exported for

``manifest.json`` has one reader and one writer, ``BundleManifest``: ``read`` validates every
field (types, ranges, hashes) and every path it names (relative, no ``..``, inside the bundle
after following symlinks, listed in ``files``) before anything else is opened; ``verify`` then
checks each listed file's sha256 and that nothing unlisted lies in the folder. A bundle that is
malformed, changed, or written for another bundle format or runtime contract is refused with one
``ModelError`` line that says what to do. ``recipe`` records the preset a bundle was exported for
(its name and self-check retries), so a bundle carries its settings to a device.

Example:
    >>> bundle = Bundle.load("bundles/edge")                  # doctest: +SKIP
    >>> [s.id for s in bundle.surrogates], bundle.num_targets  # doctest: +SKIP
    (['mobileface'], 10)
    >>> bundle.manifest.recipe                                # doctest: +SKIP
    RecipeEntry(name='edge', retries=1)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecloak.errors import ModelError

from .align import CropGeometry
from .atomic import write_bytes_atomic
from .backends.base import SurrogateFiles
from .config import TIPIMConfig
from .hashing import sha256_file
from .targets import TargetBank

BUNDLE_FORMAT = "edgecloak-bundle"
BUNDLE_FORMAT_VERSION = 1
# What the runtime loop expects of the graphs (names, shapes, 0..255 RGB NCHW input, unit
# embeddings). Bump when that contract changes; bundles from another contract are refused.
RUNTIME_CONTRACT = 1
MANIFEST = "manifest.json"
DETECTOR_FILES = ("pnet.onnx", "rnet.onnx", "onet.onnx")
DETECTORS = ("mtcnn",)
# A manifest is a few kB; anything far larger is not one (and is not worth parsing).
MAX_MANIFEST_BYTES = 16 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
# surrogate, precision and preset names: they appear in messages, warnings and file names
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


class _Invalid(Exception):
    """One field of a manifest is wrong; ``BundleManifest.from_dict`` turns it into one ModelError."""


# -- field checks: each returns the value when it has the right JSON type, else raises _Invalid ------

def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{where} must be an object, got {_kind(value)}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(f"{where} must be a list, got {_kind(value)}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{where} must be a non-empty string, got {_kind(value)}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _Invalid(f"{where} must be a name of letters, digits and ._+- (at most 64), got {_kind(value)}")
    return value


def _one_line(text: str) -> str:
    """A message with any control characters (a newline in a forged key) escaped: errors are one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _int(value: Any, where: str, minimum: int, maximum: int = 1 << 31) -> int:
    # bool is an int in Python but never a count in a manifest; the maximum keeps a forged size
    # from reaching an allocation
    if type(value) is not int or not minimum <= value <= maximum:
        raise _Invalid(f"{where} must be an integer in [{minimum}, {maximum}], got {_kind(value)}")
    return value


def _num(value: Any, where: str, positive: bool = False) -> float:
    try:
        number = float(value) if type(value) in (int, float) else math.nan
    except OverflowError:  # an int too large for a float
        number = math.nan
    if not math.isfinite(number) or (positive and number <= 0):
        raise _Invalid(f"{where} must be a finite{' positive' if positive else ''} number, got {_kind(value)}")
    return number


def _kind(value: Any) -> str:
    """A short description of a JSON value for messages (never the whole value: it may be huge)."""
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _relpath(value: Any, where: str) -> str:
    text = _str(value, where)
    parts = text.split("/")
    if text.startswith("/") or "\\" in text or any(ord(c) < 32 or ord(c) == 127 for c in text) \
            or any(p in ("", ".", "..") for p in parts):
        raise _Invalid(f"{where} {_kind(value)} must be a relative path inside the bundle (no \"..\", not absolute)")
    return text


def _unknown(data: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """The keys a newer writer may have added: kept as they are, so a rewrite does not drop them."""
    return {k: v for k, v in data.items() if k not in names}


# -- the manifest ---------------------------------------------------------------------------------

@dataclass
class SurrogateEntry:
    """One surrogate in a bundle: its graphs, crop geometry and what they were exported from.

    The runtime uses ``id``, the sizes, ``crop_scale``, the graph paths, ``extra`` and
    ``precision``; the rest is a record of the export (checked for type, not used).

    Example:
        >>> e = SurrogateEntry("m", 112, 1.0, 128, 10, "surrogates/m.grad.onnx", "surrogates/m.embed.onnx")
        >>> e.paths(), e.precision_name
        (['surrogates/m.grad.onnx', 'surrogates/m.embed.onnx'], 'fp32')
    """

    id: str
    input_size: int
    crop_scale: float
    embedding_dim: int
    max_batch: int
    grad_graph: str
    embed_graph: str
    extra: dict[str, str] = field(default_factory=dict)  # engine-specific files, e.g. {"torch": "x.pt2"}
    preprocess: str | None = None  # inside the graphs; recorded for the record
    shapes: dict[str, Any] = field(default_factory=dict)
    source_sha256: str | None = None
    graph_keys: dict[str, str] = field(default_factory=dict)  # what the graphs were exported from
    tensorrt_unsupported_ops: list[str] = field(default_factory=list)
    # the gradient graph with K = 1, for the loop's steps towards one held target (optional: bundles
    # from before it run the K graph there, slower, same result)
    held_grad_graph: str | None = None
    # set by ``edgecloak calibrate precision``: {name, gate, passed, grad_cosine, sign_agreement, ...}
    precision: dict[str, Any] | None = None
    other: dict[str, Any] = field(default_factory=dict)

    _FIELDS = {"id", "input_size", "crop_scale", "embedding_dim", "max_batch", "grad_graph", "embed_graph", "extra",
               "preprocess", "shapes", "source_sha256", "graph_keys", "tensorrt_unsupported_ops", "precision",
               "held_grad_graph"}

    @property
    def feature_keep_size(self) -> int:
        """Length F of the gradient graphs' ``feature_keep`` input (0: graphs without it, which cannot
        run feature dropout: a preset that does not drop features, or a bundle from before it).

        Example:
            >>> SurrogateEntry("m", 112, 1.0, 128, 10, "g", "e", shapes={"feature_keep": [1, 42]}).feature_keep_size
            42
        """
        shape = self.shapes.get("feature_keep")  # checked by from_dict
        return 0 if shape is None else int(shape[1])

    def paths(self) -> list[str]:
        """Every bundle file this surrogate names."""
        held = [self.held_grad_graph] if self.held_grad_graph else []
        return [self.grad_graph, self.embed_graph, *held, *self.extra.values()]

    @property
    def precision_name(self) -> str:
        """Numeric precision of the gradient graph (``fp32`` unless converted)."""
        return self.precision["name"] if self.precision else "fp32"

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "SurrogateEntry":
        d = _obj(data, where)

        def req(key: str) -> Any:
            if key not in d:
                raise _Invalid(f"{where} has no {key!r}")
            return d[key]

        extra = _obj(d.get("extra", {}), f"{where}.extra")
        precision = d.get("precision")
        if precision is not None:
            p = _obj(precision, f"{where}.precision")
            _name(p.get("name"), f"{where}.precision.name")
            if "passed" in p and type(p["passed"]) is not bool:
                raise _Invalid(f"{where}.precision.passed must be true or false")
            if p.get("passed") is False:  # the load-time warning quotes these two figures
                _num(p.get("grad_cosine"), f"{where}.precision.grad_cosine")
                _num(p.get("sign_agreement"), f"{where}.precision.sign_agreement")
        ops = _list(d.get("tensorrt_unsupported_ops", []), f"{where}.tensorrt_unsupported_ops")
        keys = _obj(d.get("graph_keys", {}), f"{where}.graph_keys")
        shapes = _obj(d.get("shapes", {}), f"{where}.shapes")
        if "feature_keep" in shapes:
            keep = _list(shapes["feature_keep"], f"{where}.shapes.feature_keep")
            if len(keep) != 2 or keep[0] != 1:
                raise _Invalid(f"{where}.shapes.feature_keep must be [1, F]")
            _int(keep[1], f"{where}.shapes.feature_keep[1]", 1, 1 << 27)  # a forged F must not reach an allocation
        return cls(
            id=_name(req("id"), f"{where}.id"),
            input_size=_int(req("input_size"), f"{where}.input_size", 1, 4096),
            crop_scale=_num(req("crop_scale"), f"{where}.crop_scale", positive=True),
            embedding_dim=_int(req("embedding_dim"), f"{where}.embedding_dim", 1, 1 << 16),
            max_batch=_int(req("max_batch"), f"{where}.max_batch", 1, 1 << 12),
            grad_graph=_relpath(req("grad_graph"), f"{where}.grad_graph"),
            embed_graph=_relpath(req("embed_graph"), f"{where}.embed_graph"),
            extra={_str(k, f"{where}.extra key"): _relpath(v, f"{where}.extra.{k}") for k, v in extra.items()},
            preprocess=None if d.get("preprocess") is None else _str(d["preprocess"], f"{where}.preprocess"),
            shapes=shapes,
            source_sha256=None if d.get("source_sha256") is None
            else _str(d["source_sha256"], f"{where}.source_sha256"),
            graph_keys={k: _str(v, f"{where}.graph_keys.{k}") for k, v in keys.items()},
            tensorrt_unsupported_ops=[_str(op, f"{where}.tensorrt_unsupported_ops[]") for op in ops],
            held_grad_graph=None if d.get("held_grad_graph") is None
            else _relpath(d["held_grad_graph"], f"{where}.held_grad_graph"),
            precision=precision,
            other=_unknown(d, cls._FIELDS),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "input_size": self.input_size, "crop_scale": self.crop_scale,
            "preprocess": self.preprocess, "embedding_dim": self.embedding_dim, "max_batch": self.max_batch,
            "grad_graph": self.grad_graph, "embed_graph": self.embed_graph, "shapes": self.shapes,
            "source_sha256": self.source_sha256, "graph_keys": self.graph_keys,
            "tensorrt_unsupported_ops": self.tensorrt_unsupported_ops, "extra": self.extra,
        }
        if self.held_grad_graph is not None:
            out["held_grad_graph"] = self.held_grad_graph
        if self.precision is not None:
            out["precision"] = self.precision
        return {**out, **self.other}


@dataclass
class RecipeEntry:
    """The preset a bundle was exported for: its name and the self-check retries it relies on.

    Example:
        >>> RecipeEntry.from_dict({"name": "fast", "retries": 1}, "recipe")
        RecipeEntry(name='fast', retries=1)
    """

    name: str
    retries: int

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "RecipeEntry":
        d = _obj(data, where)
        return cls(_name(d.get("name"), f"{where}.name"), _int(d.get("retries"), f"{where}.retries", 0, 100))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "retries": self.retries}


@dataclass
class BundleManifest:
    """``manifest.json``, typed and validated: the one reader and writer of bundle manifests.

    ``from_dict`` / ``read`` refuse (``ModelError``) anything malformed: wrong types, counts < 1,
    hashes that are not 64 lowercase hex digits, and any path (graphs, extras, targets, preset,
    detector files) that is not a plain relative path or is not listed in ``files``. ``verify``
    checks the files on disk. ``to_dict`` / ``write`` give the JSON back (unknown keys kept).

    Example:
        >>> m = BundleManifest.read(Path("bundles/edge"))          # doctest: +SKIP
        >>> m.verify(Path("bundles/edge"))                          # doctest: +SKIP
        >>> m.num_targets, [s.id for s in m.surrogates], m.recipe   # doctest: +SKIP
        (10, ['mobileface'], RecipeEntry(name='edge', retries=1))
    """

    num_targets: int
    surrogates: list[SurrogateEntry]
    files: dict[str, str]  # relative path -> sha256 of every file but the manifest
    targets: str = "targets.npz"
    preset: str = "preset.json"
    detector_name: str = "mtcnn"
    detector_dir: str = "detector"
    recipe: RecipeEntry | None = None
    target_identities: list[str] = field(default_factory=list)
    opset: int | None = None
    created: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    export_seconds: float | None = None
    other: dict[str, Any] = field(default_factory=dict)

    _FIELDS = {"format", "format_version", "runtime_contract", "num_targets", "surrogates", "files", "targets",
               "preset", "detector", "recipe", "target_identities", "opset", "created", "versions", "export_seconds"}

    # -- paths --------------------------------------------------------------------------------------

    def detector_files(self) -> list[str]:
        """The detector's graph files, relative to the bundle."""
        return [f"{self.detector_dir}/{name}" for name in DETECTOR_FILES]

    def named_paths(self) -> list[str]:
        """Every file the runtime opens by name (each must be listed in ``files``)."""
        return [p for s in self.surrogates for p in s.paths()] + [self.targets, self.preset, *self.detector_files()]

    # -- reading ------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST) -> "BundleManifest":
        """Validate a parsed manifest; ``ModelError`` (naming ``source``) when anything is off."""
        if not isinstance(data, dict):
            raise ModelError(f"{source}: invalid bundle manifest (not a JSON object); re-export the bundle")
        _check_versions(source, data)
        try:
            return cls._from_dict(data)
        except _Invalid as exc:
            raise ModelError(_one_line(f"{source}: invalid bundle manifest ({exc}); re-export the bundle "
                                       "(`edgecloak export`)")) from None

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> "BundleManifest":
        for key in ("num_targets", "surrogates", "files", "targets", "preset", "detector"):
            if key not in d:
                raise _Invalid(f"no {key!r}")
        files = {}
        for rel, digest in _obj(d["files"], "files").items():
            _relpath(rel, "files key")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise _Invalid(f"files[{rel!r}] must be a sha256 (64 lowercase hex digits), got {_kind(digest)}")
            files[rel] = digest
        if MANIFEST in files:
            raise _Invalid(f"files lists {MANIFEST} itself")
        surrogates = [SurrogateEntry.from_dict(s, f"surrogates[{i}]")
                      for i, s in enumerate(_list(d["surrogates"], "surrogates"))]
        if not surrogates:
            raise _Invalid("surrogates is empty")
        ids = [s.id for s in surrogates]
        if len(set(ids)) != len(ids):
            raise _Invalid(f"surrogate ids repeat: {', '.join(ids)}")
        detector = _obj(d["detector"], "detector")
        name = _str(detector.get("name"), "detector.name")
        if name not in DETECTORS:
            raise _Invalid(f"unknown detector {_kind(name)} (this edgecloak runs {', '.join(DETECTORS)})")
        versions = _obj(d.get("versions", {}), "versions")
        manifest = cls(
            num_targets=_int(d["num_targets"], "num_targets", 1, 1 << 12),
            surrogates=surrogates,
            files=files,
            targets=_relpath(d["targets"], "targets"),
            preset=_relpath(d["preset"], "preset"),
            detector_name=name,
            detector_dir=_relpath(detector.get("dir"), "detector.dir"),
            recipe=None if d.get("recipe") is None else RecipeEntry.from_dict(d["recipe"], "recipe"),
            target_identities=[_str(t, "target_identities[]") for t in _list(d.get("target_identities", []),
                                                                             "target_identities")],
            opset=None if d.get("opset") is None else _int(d["opset"], "opset", 1),
            created=None if d.get("created") is None else _str(d["created"], "created"),
            versions={k: _str(v, f"versions.{k}") for k, v in versions.items()},
            export_seconds=None if d.get("export_seconds") is None else _num(d["export_seconds"], "export_seconds"),
            other=_unknown(d, cls._FIELDS),
        )
        # Everything the runtime opens must be hashed first: a path outside ``files`` is refused
        # here, so an unlisted graph (or one outside the bundle) is never loaded.
        unlisted = [p for p in manifest.named_paths() if p not in files]
        if unlisted:
            raise _Invalid(f"{unlisted[0]} is used but not listed (with its sha256) in files")
        return manifest

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> "BundleManifest":
        """Read and validate ``root/manifest.json`` (``ModelError`` when absent, unreadable or invalid)."""
        root = Path(root).expanduser()
        path = root / MANIFEST
        try:
            if not path.is_file():
                raise ModelError(f"{root}: not a cloak bundle (no {MANIFEST}); create one with "
                                 f"`edgecloak export -o {root}`")
            _inside(root, MANIFEST)
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                raise ModelError(f"{path}: too large for a bundle manifest; re-export the bundle")
            data = json.loads(path.read_bytes())
        except (OSError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise ModelError(f"{path}: unreadable bundle manifest ({type(exc).__name__}); "
                             "re-export the bundle") from exc
        return cls.from_dict(data, str(root))

    # -- checking the files ---------------------------------------------------------------------------

    def verify(self, root: str | os.PathLike[str], hashes: bool = True) -> None:
        """Every listed file lies inside ``root`` (symlinks followed), exists and has its sha256
        (``hashes=False`` skips the sha256); no other file is in the folder.

        Example:
            >>> BundleManifest.read("bundles/edge").verify("bundles/edge")   # doctest: +SKIP
        """
        root = Path(root).expanduser()
        try:
            for rel, want in self.files.items():
                path = _inside(root, rel)
                if not path.is_file():
                    raise ModelError(f"{root}: bundle file {rel} is missing; re-export the bundle")
                if not hashes:
                    continue
                got = sha256_file(path)
                if got != want:
                    raise ModelError(
                        f"{root}: bundle file {rel} does not match its manifest (sha256 {got[:12]}..., expected "
                        f"{want[:12]}...); it was changed or damaged, re-export the bundle")
            for path in root.rglob("*"):
                rel = path.relative_to(root).as_posix()
                if path.is_file() and rel != MANIFEST and rel not in self.files:
                    raise ModelError(f"{root}: unexpected file {rel} in the bundle (not in its manifest); "
                                     "remove it or re-export")
        except OSError as exc:
            raise ModelError(f"{root}: cannot read the bundle ({exc.strerror or exc}); re-export it") from exc

    def read_file(self, root: Path, rel: str, verify: bool = True) -> bytes:
        """The bytes of a listed file, checked against its sha256 as read (not re-opened later)."""
        path = _inside(root, rel)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"{root}: cannot read bundle file {rel} ({exc.strerror}); re-export the bundle") from exc
        got = hashlib.sha256(data).hexdigest()
        if verify and got != self.files[rel]:  # damaged before the run, or changed since it was verified
            raise ModelError(f"{root}: bundle file {rel} does not match its manifest (sha256 {got[:12]}..., "
                             f"expected {self.files[rel][:12]}...); it was changed or damaged, re-export the bundle")
        return data

    # -- writing ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the layout ``from_dict`` reads; optional fields left out when unset)."""
        out: dict[str, Any] = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION,
                               "runtime_contract": RUNTIME_CONTRACT}
        if self.created is not None:
            out["created"] = self.created
        if self.versions:
            out["versions"] = self.versions
        if self.opset is not None:
            out["opset"] = self.opset
        out.update({
            "num_targets": self.num_targets,
            "surrogates": [s.to_dict() for s in self.surrogates],
            "detector": {"name": self.detector_name, "dir": self.detector_dir},
            "targets": self.targets,
            "target_identities": self.target_identities,
            "preset": self.preset,
        })
        if self.recipe is not None:
            out["recipe"] = self.recipe.to_dict()
        if self.export_seconds is not None:
            out["export_seconds"] = self.export_seconds
        out["files"] = self.files
        return {**out, **self.other}

    def write(self, root: str | os.PathLike[str]) -> Path:
        """Validate (as a reader would) and write ``root/manifest.json`` atomically; its path.

        Example:
            >>> manifest.hash_files(staging); manifest.write(staging)   # doctest: +SKIP
        """
        data = self.to_dict()
        BundleManifest.from_dict(json.loads(json.dumps(data)), "manifest to write")  # never write what we refuse
        return write_bytes_atomic(Path(root) / MANIFEST, (json.dumps(data, indent=2) + "\n").encode())

    def hash_files(self, root: str | os.PathLike[str]) -> None:
        """Set ``files`` to the sha256 of every file under ``root`` but the manifest (after writing them)."""
        root = Path(root)
        self.files = {p.relative_to(root).as_posix(): sha256_file(p)
                      for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() != MANIFEST}


def _check_versions(source: str, manifest: dict[str, Any]) -> None:
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{source}: {MANIFEST} is not an edgecloak bundle manifest")
    got = (manifest.get("format_version"), manifest.get("runtime_contract"))
    want = (BUNDLE_FORMAT_VERSION, RUNTIME_CONTRACT)
    if got != want or any(type(v) is not int for v in got):
        raise ModelError(
            f"{source}: bundle format {_kind(got[0])} / runtime contract {_kind(got[1])}, but this edgecloak reads "
            f"format {want[0]} / contract {want[1]}; re-export it with this version (`edgecloak export`)"
        )


def _inside(root: Path, rel: str) -> Path:
    """``root / rel`` when its real path (symlinks followed) stays inside the real ``root``."""
    path = root / rel
    try:
        real, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ModelError(f"{root}: bundle file {rel} cannot be resolved ({exc}); re-export the bundle") from exc
    if not real.is_relative_to(base):
        raise ModelError(_one_line(f"{root}: bundle file {rel} leads outside the bundle (to {real}); refusing it, "
                                   "re-export the bundle"))
    return path


# -- the preset and targets inside a bundle -------------------------------------------------------------

def _fits(value: Any, hint: Any) -> bool:
    """Does a JSON value have the type a TIPIMConfig field is annotated with?

    TIPIMConfig checks ranges, not types (``steps: "8"`` or ``keep_best: "no"`` would pass it
    and fail deep inside the loop), so a bundle's preset is type-checked here first.
    """
    origin = typing.get_origin(hint)
    if hint is float:
        try:
            return type(value) in (int, float) and math.isfinite(float(value))
        except OverflowError:
            return False
    if hint is int:
        return type(value) is int
    if hint is bool:
        return type(value) is bool
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return isinstance(value, dict) and set(value) <= set(hints) \
            and all(_fits(v, hints[k]) for k, v in value.items())
    return True  # an annotation this check does not know: TIPIMConfig judges it


def preset_from_json(data: bytes, source: str = "preset.json") -> TIPIMConfig:
    """The TIPIMConfig in a bundle's ``preset.json`` (``ModelError`` when it is not a valid one).

    Example:
        >>> preset_from_json(b'{"steps": 8, "alpha": 2.0}').steps
        8
        >>> preset_from_json(b'{"steps": "8"}')
        Traceback (most recent call last):
        ...
        edgecloak.errors.ModelError: preset.json: invalid bundle preset (steps must be int, got "8"); re-export the bundle
    """
    try:
        settings = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{source}: bundle preset is not JSON ({type(exc).__name__}); re-export the bundle") from None
    if not isinstance(settings, dict):
        raise ModelError(f"{source}: invalid bundle preset (not a JSON object); re-export the bundle")
    hints = typing.get_type_hints(TIPIMConfig)
    for key, value in settings.items():
        if key in hints and not _fits(value, hints[key]):
            want = getattr(hints[key], "__name__", None) or str(hints[key]).replace("edgecloak.runtime.config.", "")
            raise ModelError(_one_line(f"{source}: invalid bundle preset ({key} must be {want}, got {_kind(value)}); "
                                       "re-export the bundle"))
    try:
        return TIPIMConfig.from_dict(settings)
    except (TypeError, ValueError) as exc:  # unknown settings, values out of range
        raise ModelError(_one_line(f"{source}: invalid bundle preset ({exc}); re-export the bundle")) from None


def _targets_from_npz(data: bytes, manifest: BundleManifest, source: str) -> TargetBank:
    """The target bank in ``targets.npz``, checked against the manifest's surrogates and K."""
    try:
        bank = TargetBank.load(io.BytesIO(data))  # type: ignore[arg-type]  # np.load reads a file object too
    except Exception as exc:  # noqa: BLE001 - np.load of foreign bytes fails in many ways; all mean "damaged"
        raise ModelError(f"{source}: unreadable targets ({type(exc).__name__}); re-export the bundle") from None
    missing = sorted(s.id for s in manifest.surrogates if s.id not in bank.embeddings)
    if missing:
        raise ModelError(f"{source}: targets have no embeddings for {', '.join(missing)}; re-export the bundle")
    if not 1 <= bank.size <= manifest.num_targets:
        raise ModelError(f"{source}: {bank.size} target identities, but the graphs take 1 to {manifest.num_targets}; "
                         "re-export the bundle")
    for s in manifest.surrogates:
        emb = bank.embeddings[s.id]
        if emb.shape != (bank.size, s.embedding_dim) or not np.isfinite(emb).all():
            raise ModelError(f"{source}: {s.id} target embeddings have shape {emb.shape}, expected "
                             f"{(bank.size, s.embedding_dim)} of finite numbers; re-export the bundle")
    return bank


# -- the bundle ---------------------------------------------------------------------------------------

@dataclass
class Bundle:
    """A verified bundle: surrogates' graph files, crop geometries, detector, targets and preset."""

    root: Path
    manifest: BundleManifest
    surrogates: list[SurrogateFiles]
    geometries: dict[str, CropGeometry]
    targets: TargetBank
    preset: TIPIMConfig

    @property
    def num_targets(self) -> int:
        return self.manifest.num_targets

    @property
    def detector_dir(self) -> Path:
        return self.root / self.manifest.detector_dir

    @property
    def recipe(self) -> RecipeEntry | None:
        """The preset the bundle was exported for (None for bundles from before it was recorded)."""
        return self.manifest.recipe

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True) -> "Bundle":
        """Read and validate ``path/manifest.json``, check every file's sha256 (unless ``verify=False``;
        paths are checked either way), then read the targets and preset.

        Example:
            >>> Bundle.load("bundles/edge").preset.steps   # doctest: +SKIP
            16
        """
        root = Path(path).expanduser()
        manifest = BundleManifest.read(root)
        manifest.verify(root, hashes=verify)
        k = manifest.num_targets
        surrogates, geometries = [], {}
        for s in manifest.surrogates:
            surrogates.append(SurrogateFiles(
                id=s.id, input_size=s.input_size, embedding_dim=s.embedding_dim, num_targets=k,
                max_batch=s.max_batch, grad_graph=root / s.grad_graph, embed_graph=root / s.embed_graph,
                extra={name: root / rel for name, rel in s.extra.items()},
                held_grad_graph=None if s.held_grad_graph is None else root / s.held_grad_graph,
                feature_keep_size=s.feature_keep_size,
            ))
            geometries[s.id] = CropGeometry(s.input_size, s.crop_scale)
        targets = _targets_from_npz(manifest.read_file(root, manifest.targets, verify), manifest,
                                    f"{root}/{manifest.targets}")
        preset = preset_from_json(manifest.read_file(root, manifest.preset, verify), f"{root}/{manifest.preset}")
        for s in manifest.surrogates:
            p = s.precision or {}
            if p.get("passed") is False:  # written with --allow-failed-gate: say so every time it is used
                warnings.warn(f"{root}: {s.id} runs a {p['name']} gradient graph that failed its fidelity gate "
                              f"(gradient cosine {p['grad_cosine']:.3f}, sign agreement {p['sign_agreement']:.3f}); "
                              "protection may be weaker than measured for fp32", stacklevel=2)
        return cls(root, manifest, surrogates, geometries, targets, preset)

    @property
    def precisions(self) -> dict[str, str]:
        """Numeric precision of each surrogate's gradient graph (``fp32`` unless converted)."""
        return {s.id: s.precision_name for s in self.manifest.surrogates}

