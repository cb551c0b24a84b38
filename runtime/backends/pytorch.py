"""torch backend: the surrogates as ``torch.export`` programs, gradients by autograd (CPU or CUDA).

One more engine of the runtime: it needs torch, so it is only for workstations and for
checking the other backends. It runs the bundle's optional ``<id>.pt2`` programs (export the
bundle with ``--with-torch``); no edgecloak export code is imported.

Example:
    >>> engine = TorchBackend(device="cpu").load(bundle.surrogates[0])   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np

from edgecloak.errors import ModelError

from .base import Backend, SurrogateEngine, SurrogateFiles


def optional_torch():
    """torch, loaded only when a torch-backed engine is asked for (raises ImportError without it).

    The runtime package has no import statement for torch (devices have none, and the layering
    contract forbids it); the engines that can use it (this backend; TensorRT's buffers) load it
    through here, by name, on demand.
    """
    return importlib.import_module("torch")


class TorchEngine(SurrogateEngine):
    """One surrogate's ``torch.export`` program on a device."""

    def __init__(self, files: SurrogateFiles, device: str):
        torch = optional_torch()

        super().__init__(files)
        path = files.extra.get("torch")
        if path is None or not path.is_file():
            raise ModelError(f"{files.id}: the bundle has no torch program; re-export it with --with-torch")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export.load warns about weight grouping on CPU
            self.module = torch.export.load(str(path)).module().to(device)
        self.device = torch.device(device)
        self._torch = torch

    @property
    def has_held_graph(self) -> bool:
        return True  # autograd takes any number of cotangents: one target costs one backward

    @property
    def can_drop_features(self) -> bool:
        return False  # the torch program is the plain recognizer: no feature_keep input

    def _gradient(self, crop: np.ndarray, cotangents: np.ndarray, feature_keep: np.ndarray | None = None,
                  held: bool = False) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        k = cotangents.shape[1]  # held or not: autograd takes the cotangents it is given
        x = torch.from_numpy(np.ascontiguousarray(crop)).to(self.device)
        cot = torch.from_numpy(np.ascontiguousarray(cotangents[0])).to(self.device)
        # K copies in one batch: one backward gives the K vector-Jacobian products
        xk = x.expand(k, -1, -1, -1).clone().requires_grad_(True)
        with torch.enable_grad():
            emb = self.module(xk)
            (grad,) = torch.autograd.grad((emb * cot).sum(), xk)
        return emb[:1].detach().cpu().numpy(), grad[None].cpu().numpy()

    def embed(self, crops: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)).cpu().numpy()


class TorchBackend(Backend):
    """torch autograd on CPU or CUDA (``device=None``: CUDA when available)."""

    name = "torch"

    def __init__(self, device: str | None = None):
        self.device = device

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            torch = optional_torch()
        except ImportError:
            return False, "torch is not installed (pip install edgecloak[export])"
        return True, f"torch {torch.__version__} ({'cuda' if torch.cuda.is_available() else 'cpu'})"

    def _device(self) -> str:
        torch = optional_torch()

        return self.device or ("cuda" if torch.cuda.is_available() else "cpu")

    def load(self, files: SurrogateFiles) -> TorchEngine:
        return TorchEngine(files, self._device())

    def describe(self) -> str:
        torch = optional_torch()

        return f"torch {torch.__version__} [{self._device()}]"
