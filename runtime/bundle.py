"""The cloak bundle: the unit of deployment, read and verified by the runtime.

A bundle is a folder written by ``edgecloak export`` (``edgecloak.export.bundle``)::

    bundle/
      manifest.json                what follows, with the sha256 of every file
      surrogates/<id>.grad.onnx    (x [1,3,S,S], cotangents [1,K,D]) -> (embedding, grad)
      surrogates/<id>.embed.onnx   x [B,3,S,S] -> embedding [B,D]
      surrogates/<id>.pt2          optional: torch.export program (torch backend only)
      detector/{pnet,rnet,onet}.onnx
      targets.npz                  target identities and their embeddings per surrogate
      preset.json                  the TIP-IM settings the bundle was exported for

``Bundle.load`` refuses a bundle whose files do not match their recorded sha256, or that was
written for another bundle format or runtime contract, with a message that says what to do.

Example:
    >>> bundle = Bundle.load("bundles/edge")                  # doctest: +SKIP
    >>> [s.id for s in bundle.surrogates], bundle.num_targets  # doctest: +SKIP
    (['mobileface'], 10)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecloak.errors import ModelError

from .align import CropGeometry
from .backends.base import SurrogateFiles
from .config import TIPIMConfig
from .targets import TargetBank

BUNDLE_FORMAT = "edgecloak-bundle"
BUNDLE_FORMAT_VERSION = 1
# What the runtime loop expects of the graphs (names, shapes, 0..255 RGB NCHW input, unit
# embeddings). Bump when that contract changes; bundles from another contract are refused.
RUNTIME_CONTRACT = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Bundle:
    """A verified bundle: surrogates' graph files, crop geometries, detector, targets and preset."""

    root: Path
    manifest: dict[str, Any]
    surrogates: list[SurrogateFiles]
    geometries: dict[str, CropGeometry]
    targets: TargetBank
    preset: TIPIMConfig

    @property
    def num_targets(self) -> int:
        return int(self.manifest["num_targets"])

    @property
    def detector_dir(self) -> Path:
        return self.root / self.manifest["detector"]["dir"]

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True) -> "Bundle":
        """Read ``path/manifest.json`` and check every file's sha256 (unless ``verify=False``)."""
        root = Path(path).expanduser()
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise ModelError(f"{root}: not a cloak bundle (no {MANIFEST}); create one with `edgecloak export -o {root}`")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{manifest_path}: unreadable bundle manifest ({exc}); re-export the bundle") from exc
        _check_versions(root, manifest)
        if verify:
            verify_files(root, manifest)
        k = int(manifest["num_targets"])
        surrogates, geometries = [], {}
        for s in manifest["surrogates"]:
            extra = {name: root / rel for name, rel in s.get("extra", {}).items()}
            surrogates.append(SurrogateFiles(
                id=s["id"], input_size=int(s["input_size"]), embedding_dim=int(s["embedding_dim"]), num_targets=k,
                max_batch=int(s["max_batch"]), grad_graph=root / s["grad_graph"], embed_graph=root / s["embed_graph"],
                extra=extra,
            ))
            geometries[s["id"]] = CropGeometry(int(s["input_size"]), float(s["crop_scale"]))
        targets = TargetBank.load(root / manifest["targets"])
        missing = sorted(set(geometries) - set(targets.embeddings))
        if missing:
            raise ModelError(f"{root}: targets have no embeddings for {', '.join(missing)}; re-export the bundle")
        preset = TIPIMConfig.from_dict(json.loads((root / manifest["preset"]).read_text()))
        for s in manifest["surrogates"]:
            p = s.get("precision", {})
            if p.get("passed") is False:  # written with --allow-failed-gate: say so every time it is used
                warnings.warn(f"{root}: {s['id']} runs a {p['name']} gradient graph that failed its fidelity gate "
                              f"(gradient cosine {p['grad_cosine']:.3f}, sign agreement {p['sign_agreement']:.3f}); "
                              "protection may be weaker than measured for fp32", stacklevel=2)
        return cls(root, manifest, surrogates, geometries, targets, preset)

    @property
    def precisions(self) -> dict[str, str]:
        """Numeric precision of each surrogate's gradient graph (``fp32`` unless converted)."""
        return {s["id"]: s.get("precision", {}).get("name", "fp32") for s in self.manifest["surrogates"]}


def _check_versions(root: Path, manifest: dict[str, Any]) -> None:
    if manifest.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{root}: {MANIFEST} is not an edgecloak bundle manifest")
    got = (manifest.get("format_version"), manifest.get("runtime_contract"))
    want = (BUNDLE_FORMAT_VERSION, RUNTIME_CONTRACT)
    if got != want:
        raise ModelError(
            f"{root}: bundle format {got[0]} / runtime contract {got[1]}, but this edgecloak reads format "
            f"{want[0]} / contract {want[1]}; re-export it with this version (`edgecloak export`)"
        )


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Every file listed in the manifest exists and has its recorded sha256; no unlisted graphs."""
    listed = manifest.get("files", {})
    for rel, want in listed.items():
        path = root / rel
        if not path.is_file():
            raise ModelError(f"{root}: bundle file {rel} is missing; re-export the bundle")
        got = sha256_file(path)
        if got != want:
            raise ModelError(
                f"{root}: bundle file {rel} does not match its manifest (sha256 {got[:12]}..., expected "
                f"{want[:12]}...); it was changed or damaged, re-export the bundle"
            )
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel != MANIFEST and rel not in listed:
            raise ModelError(f"{root}: unexpected file {rel} in the bundle (not in its manifest); remove it or re-export")
