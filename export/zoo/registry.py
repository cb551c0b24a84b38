"""The model zoo: which models exist, and converting them once into the cache.

``models.toml`` is the table; this module turns a row into a converted artefact under
``$EDGECLOAK_HOME/models/<id>/`` with a ``manifest.json`` (source package, pinned sha256, converter
version, files). A stale artefact (other converter version or source hash) is rebuilt on use.
Converters are picked by the row's ``format`` (one module per source format, like a router).

Example:
    >>> from edgecloak.export.zoo.registry import recognizer_spec
    >>> recognizer_spec("mobileface").input_size
    112
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
import tomllib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

from edgecloak.errors import ModelError
from edgecloak.runtime.atomic import write_bytes_atomic

from .fetch import edgecloak_home, member_path, package_sources

MODELS_FILE = Path(__file__).with_name("models.toml")


@dataclass(frozen=True)
class RecognizerSpec:
    """Everything needed to feed a recognizer: one row of ``models.toml``."""

    id: str
    role: str
    format: str
    package: str
    source: str
    input_size: int
    crop_scale: float
    preprocess: str
    embedding_dim: int
    output_node: str | None = None
    extra_files: tuple[str, ...] = ()


@cache
def _table() -> dict[str, Any]:
    return tomllib.loads(MODELS_FILE.read_text())


def recognizer_ids(role: str | None = None) -> list[str]:
    """Ids of all recognizers, or of those with the given role ("surrogate" / "evaluator")."""
    return [k for k, v in _table()["recognizers"].items() if role is None or v["role"] == role]


def default_surrogates() -> list[str]:
    """The default surrogate ensemble."""
    return list(_table()["defaults"]["surrogates"])


def recognizer_spec(model_id: str) -> RecognizerSpec:
    """The spec of one recognizer; ``ModelError`` names the known ids when it is unknown."""
    rows = _table()["recognizers"]
    if model_id not in rows:
        raise ModelError(f"unknown recognizer {model_id!r}; known: {', '.join(rows)}")
    row = dict(rows[model_id])
    row["extra_files"] = tuple(row.get("extra_files", ()))
    return RecognizerSpec(id=model_id, **row)


def _converter(fmt: str):
    return importlib.import_module(f"edgecloak.export.convert.{fmt}")


def _model_dir(model_id: str) -> Path:
    return edgecloak_home() / "models" / model_id


def _read_manifest(model_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((model_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _is_current(manifest: dict[str, Any] | None, package: str, converter_version: str) -> bool:
    return bool(
        manifest
        and manifest.get("converter_version") == converter_version
        and manifest.get("source_sha256") == package_sources()[package].sha256
    )


def _write_manifest(model_dir: Path, body: dict[str, Any]) -> None:
    # these exact bytes name the evaluation's embedding caches (their hash): keep the format
    write_bytes_atomic(model_dir / "manifest.json", json.dumps(body, indent=2, sort_keys=True).encode())


def converted_manifest(model_id: str) -> dict[str, Any]:
    """The manifest of a recognizer's conversion (source sha256, converter version), converting it
    into the cache first if needed.

    Example:
        >>> converted_manifest("mobileface")["converter_version"]   # doctest: +SKIP
        '3'
    """
    return json.loads((ensure_recognizer(model_id).parent / "manifest.json").read_text())


def ensure_recognizer(model_id: str) -> Path:
    """Convert one recognizer into the cache unless current; return the path of its ``model.pt``."""
    spec = recognizer_spec(model_id)
    converter = _converter(spec.format)
    model_dir = _model_dir(model_id)
    if _is_current(_read_manifest(model_dir), spec.package, converter.CONVERTER_VERSION):
        return model_dir / "model.pt"

    import torch  # optional: the export extra; only converting needs it, not reading the cache

    source = member_path(spec.package, spec.source)
    for extra in spec.extra_files:
        member_path(spec.package, extra)
    started = time.perf_counter()
    options = {"output_node": spec.output_node} if spec.output_node else {}
    module = converter.convert(source, **options)
    module.eval()
    staging = model_dir.with_name(f".{model_id}.converting")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.save(module, staging / "model.pt")
    _write_manifest(staging, {
        "id": model_id,
        "kind": "recognizer",
        "spec": asdict(spec),
        "source_package": package_sources()[spec.package].spec,
        "source_sha256": package_sources()[spec.package].sha256,
        "source_member": spec.source,
        "converter": f"edgecloak.export.convert.{spec.format}",
        "converter_version": converter.CONVERTER_VERSION,
        "torch_version": torch.__version__,
        "conversion_seconds": round(time.perf_counter() - started, 2),
        "files": ["model.pt"],
    })
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(staging, model_dir)
    return model_dir / "model.pt"


def ensure_detector(name: str = "mtcnn") -> Path:
    """Convert the detector's weights to ONNX into the cache unless current; return its directory."""
    row = _table()["detector"][name]
    converter = _converter(row["format"])
    model_dir = _model_dir(f"detector-{name}")
    if _is_current(_read_manifest(model_dir), row["package"], converter.CONVERTER_VERSION):
        return model_dir
    sources = [member_path(row["package"], s) for s in row["sources"]]
    staging = model_dir.with_name(f".detector-{name}.converting")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    outputs = converter.convert(*sources, staging)
    _write_manifest(staging, {
        "id": f"detector-{name}",
        "kind": "detector",
        "source_package": package_sources()[row["package"]].spec,
        "source_sha256": package_sources()[row["package"]].sha256,
        "converter": f"edgecloak.export.convert.{row['format']}",
        "converter_version": converter.CONVERTER_VERSION,
        "files": sorted(Path(p).name for p in outputs.values()),
    })
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(staging, model_dir)
    return model_dir


def list_models() -> list[dict[str, Any]]:
    """One row per known model: id, role, source, and whether/when it was converted."""
    rows = []
    for model_id in recognizer_ids():
        spec = recognizer_spec(model_id)
        manifest = _read_manifest(_model_dir(model_id))
        rows.append({
            "id": model_id,
            "role": spec.role,
            "source": package_sources()[spec.package].spec,
            "converted": manifest is not None,
            "converter_version": manifest.get("converter_version") if manifest else None,
        })
    det = _read_manifest(_model_dir("detector-mtcnn"))
    rows.append({
        "id": "mtcnn",
        "role": "detector",
        "source": package_sources()["facenet-pytorch"].spec,
        "converted": det is not None,
        "converter_version": det.get("converter_version") if det else None,
    })
    return rows
