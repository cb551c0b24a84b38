"""The one interface every engine implements: a surrogate's gradient graph and embedding graph.

TIP-IM needs two things from each surrogate recognizer, and nothing else:

* ``embed_and_grad(crop, cotangents, feature_keep=None)``: the unit embedding of ONE aligned crop
  and the k input gradients ``d <embedding, cotangents[k]> / d crop`` (one forward, k
  vector-Jacobian products), for 1 <= k <= K; with ``feature_keep`` [1,F], of the network whose
  convolution outputs are multiplied by it (a dropout mask: surrogate model augmentation);
* ``embed(crops)``: unit embeddings of a batch of crops (to score the K candidate images).

A backend turns the bundle's files for one surrogate into a ``SurrogateEngine``. The TIP-IM loop
(``edgecloak.runtime.tipim``) only talks to this interface, so it does not know whether ONNX
Runtime, TensorRT or torch runs the graphs.

Shapes (float32, C-contiguous; pixels 0..255, RGB, NCHW):
    crop       [1, 3, S, S]          cotangents [1, k, D]       (1 <= k <= K)     feature_keep [1, F]
    embedding  [1, D]                grad       [1, k, 3, S, S]
    crops      [B, 3, S, S], 1 <= B <= max_batch   ->  embeddings [B, D]

Why k may be smaller than K: between the loop's re-scorings it steps towards ONE held target, and a
K-target gradient graph would compute K vector-Jacobian products to use one. A bundle therefore
ships a single-target companion of each gradient graph (``SurrogateFiles.held_grad_graph``):
k == 1 runs it (one forward, one VJP), k == K runs the K graph, and anything else (or k == 1
without a companion, as in bundles from before it existed) runs the K graph with the cotangents
padded by zero rows. Subclasses implement ``_gradient`` (the K graph, or with ``held`` the
companion); ``embed_and_grad`` picks between them.

Engines may return views of internal buffers that the next call overwrites (that is how they avoid
allocating per step): copy what you keep.

Example:
    >>> engine = OnnxRuntimeBackend().load(bundle.surrogates[0])      # doctest: +SKIP
    >>> emb, grad = engine.embed_and_grad(crop, cotangents)            # doctest: +SKIP
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecloak.errors import ModelError


@dataclass(frozen=True)
class SurrogateFiles:
    """What a backend needs to know about one surrogate in a bundle (see ``runtime.bundle``).

    ``extra`` holds optional engine-specific files (for example ``{"torch": Path("x.pt2")}``).
    """

    id: str
    input_size: int
    embedding_dim: int
    num_targets: int  # K, fixed in the gradient graph
    max_batch: int  # largest batch the embedding graph is built for
    grad_graph: Path  # ONNX (x, cotangents [1,K,D]) -> (embedding, grad [1,K,3,S,S])
    embed_graph: Path  # ONNX x [B,3,S,S] -> embedding [B,D]
    extra: dict[str, Path] = field(default_factory=dict)
    held_grad_graph: Path | None = None  # the same gradient graph with K = 1 (None: run the K graph)
    # F of the gradient graphs' ``feature_keep`` input [1,F] (0: graphs without it, from older bundles)
    feature_keep_size: int = 0


class SurrogateEngine(ABC):
    """One surrogate, ready to run. Not thread-safe: buffers are reused between calls."""

    def __init__(self, files: SurrogateFiles):
        self.files = files

    @property
    def id(self) -> str:
        return self.files.id

    @property
    def has_held_graph(self) -> bool:
        """Does a single-target step cost one VJP here (rather than the K graph's K)?"""
        return self.files.held_grad_graph is not None and self.files.num_targets > 1

    @property
    def can_drop_features(self) -> bool:
        """Do this engine's gradient graphs take a ``feature_keep`` input (feature dropout)?"""
        return self.files.feature_keep_size > 0

    def embed_and_grad(self, crop: np.ndarray, cotangents: np.ndarray,
                       feature_keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(embedding [1,D], grad [1,k,3,S,S]) for crop [1,3,S,S] and cotangents [1,k,D], 1 <= k <= K;
        ``feature_keep`` [1,F]: the convolution outputs' multipliers (None: the plain network)."""
        k, big_k = cotangents.shape[1], self.files.num_targets
        if not 1 <= k <= big_k:
            raise ValueError(f"{self.id}: {k} cotangents, but the gradient graph takes 1..{big_k}")
        if feature_keep is not None:
            if not self.can_drop_features:
                raise ModelError(f"{self.id}: this engine's gradient graphs take no feature_keep input (a bundle "
                                 "exported without feature dropout, or the torch backend); re-export the bundle "
                                 "with --feature-dropout")
            if feature_keep.shape != (1, self.files.feature_keep_size):
                raise ValueError(f"{self.id}: feature_keep shape {feature_keep.shape}, "
                                 f"expected (1, {self.files.feature_keep_size})")
        if k == 1 and self.has_held_graph:
            return self._gradient(crop, cotangents, feature_keep, held=True)
        if k == big_k:
            return self._gradient(crop, cotangents, feature_keep)
        padded = np.zeros((1, big_k, cotangents.shape[2]), np.float32)
        padded[:, :k] = cotangents
        embedding, grad = self._gradient(crop, padded, feature_keep)
        return embedding, grad[:, :k]

    @abstractmethod
    def _gradient(self, crop: np.ndarray, cotangents: np.ndarray, feature_keep: np.ndarray | None = None,
                  held: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The K gradient graph: (embedding [1,D], grad [1,K,3,S,S]) for cotangents [1,K,D]; with
        ``held`` (only asked for when ``has_held_graph``), the single-target graph for cotangents [1,1,D]."""

    @abstractmethod
    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Unit embeddings [B,D] of crops [B,3,S,S] (B <= files.max_batch)."""

    def close(self) -> None:
        """Release engine resources (GPU memory, sessions). Safe to call twice."""


class Backend(ABC):
    """An engine family. ``available()`` says whether it can run here, and if not, why not."""

    name: str = ""

    @classmethod
    @abstractmethod
    def available(cls) -> tuple[bool, str]:
        """(True, what it will run on) or (False, the reason it cannot run on this machine)."""

    @abstractmethod
    def load(self, files: SurrogateFiles) -> SurrogateEngine:
        """Build or load the engine for one surrogate."""

    def describe(self) -> str:
        """A short human-readable name of the device/provider actually used."""
        return self.name
