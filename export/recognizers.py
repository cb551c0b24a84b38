"""Recognizers as torch modules behind one interface: aligned crops (0..255) in, unit embeddings out.

The converted network only knows its own input domain; the spec (``models.toml``) says how to get
there, so preprocessing lives in exactly one place: ``Recognizer.preprocess``.

Example:
    >>> from edgecloak.export.recognizers import Recognizer
    >>> rec = Recognizer.load("mobileface")            # doctest: +SKIP
    >>> rec(torch.zeros(1, 3, 112, 112)).shape         # doctest: +SKIP
    torch.Size([1, 256])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgecloak.errors import ModelError

from .zoo.registry import RecognizerSpec, ensure_recognizer, recognizer_spec


def prewhiten(x: torch.Tensor) -> torch.Tensor:
    """FaceNet's per-image standardisation: (x - mean) / max(std, 1/sqrt(n)), n = pixels*channels."""
    flat = x.flatten(1)
    n = flat.shape[1]
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False).clamp_min(1.0 / n**0.5)
    return (x - mean[:, None, None, None]) / std[:, None, None, None]


class Recognizer(nn.Module):
    """A face recognizer: ``forward(crops)`` maps [B,3,S,S] RGB 0..255 crops to unit embeddings [B,D]."""

    def __init__(self, spec: RecognizerSpec, net: nn.Module):
        super().__init__()
        self.spec = spec
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(cls, model_id: str, device: str | torch.device = "cpu") -> "Recognizer":
        """Load (converting on first use) a recognizer from the zoo."""
        spec = recognizer_spec(model_id)
        path = ensure_recognizer(model_id)
        try:
            # Our own cache, written by our converter: the pickled module is trusted.
            net = torch.load(path, map_location=device, weights_only=False)
        except Exception as exc:  # a cache written by another edgecloak version
            raise ModelError(f"{model_id}: cannot load {path} ({exc}); delete it to reconvert") from exc
        return cls(spec, net).to(device)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        """Map 0..255 RGB crops into the network's own input domain."""
        if self.spec.preprocess == "raw255":
            return crops
        if self.spec.preprocess == "prewhiten":
            return prewhiten(crops)
        raise ModelError(f"{self.id}: unknown preprocessing {self.spec.preprocess!r}")

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(self.preprocess(crops)), dim=1)
