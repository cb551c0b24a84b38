"""Engines that run a bundle's graphs, behind one interface (``base.py``), and how one is picked.

``--backend auto`` takes the first available of: native TensorRT, ONNX Runtime (which itself
prefers its TensorRT / CUDA execution providers when onnxruntime-gpu has them, else the CPU).
torch is never picked automatically: it needs the export extra's torch and the bundle's optional
torch programs (a workstation, or checking the other backends), so it runs only when named.

Example:
    >>> backend, why = select_backend("auto")
    >>> backend.name in BACKENDS
    True
"""

from __future__ import annotations

from .base import Backend, SurrogateEngine, SurrogateFiles
from .onnxruntime import OnnxRuntimeBackend
from .pytorch import TorchBackend
from .tensorrt import TensorRTBackend

BACKENDS = ("tensorrt", "onnxruntime", "torch")
AUTO_ORDER = ("tensorrt", "onnxruntime")


def backend_class(name: str) -> type[Backend]:
    """The Backend class for a name in ``BACKENDS``.

    Every backend module imports without its engine's library (tensorrt, cuda-python and torch are
    loaded when an engine is made); ``available()`` says whether one can run here.
    """
    if name == "onnxruntime":
        return OnnxRuntimeBackend
    if name == "tensorrt":
        return TensorRTBackend
    if name == "torch":
        return TorchBackend
    raise ValueError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")


def select_backend(name: str = "auto") -> tuple[Backend, str]:
    """(backend instance, one line saying what was chosen and why).

    A named backend that cannot run here raises ``RuntimeError`` with the reason.
    """
    if name != "auto":
        cls = backend_class(name)
        ok, reason = cls.available()
        if not ok:
            raise RuntimeError(f"backend {name} is not available here: {reason}")
        backend = cls()
        return backend, f"{backend.describe()} (requested)"
    skipped = []
    for candidate in AUTO_ORDER:
        cls = backend_class(candidate)
        ok, reason = cls.available()
        if ok:
            backend = cls()
            note = f"; skipped {'; '.join(skipped)}" if skipped else ""
            return backend, f"{backend.describe()} (auto{note})"
        skipped.append(f"{candidate}: {reason}")
    raise RuntimeError("no backend can run here: " + "; ".join(skipped))


__all__ = ["Backend", "SurrogateEngine", "SurrogateFiles", "BACKENDS", "backend_class", "select_backend"]
