"""Engines that run a bundle's graphs, behind one interface (``base.py``), and how one is picked.

``--backend auto`` takes the first available of: native TensorRT, ONNX Runtime (which itself
prefers its TensorRT / CUDA execution providers when onnxruntime-gpu has them, else the CPU).
torch is never picked automatically: it is the reference, named explicitly.

Example:
    >>> backend, why = select_backend("auto")
    >>> backend.name in BACKENDS
    True
"""

from __future__ import annotations

from .base import Backend, SurrogateEngine, SurrogateFiles

BACKENDS = ("tensorrt", "onnxruntime", "torch")
AUTO_ORDER = ("tensorrt", "onnxruntime")


def backend_class(name: str) -> type[Backend]:
    """The Backend class for a name in ``BACKENDS`` (imported on demand)."""
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend
    if name == "torch":
        from .pytorch import TorchBackend

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
