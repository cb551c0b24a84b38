"""Target identities for TIP-IM: K faces of people who are not the user, embedded per surrogate.

The embeddings are float32 numpy arrays, one ``[K, D]`` per surrogate, whoever built the bank (a
bundle, the runtime, the torch embedders of ``edgecloak.export``): they are checked and converted
at construction, and anything that is not a numpy array (a torch tensor above all) is refused with
a ``TypeError``, so no other array type travels through the SDK. The torch oracle converts to
torch itself.

Example:
    >>> bank = TargetBank(["a", "b"], {"m": np.eye(2)})
    >>> bank.embeddings["m"].dtype
    dtype('float32')
    >>> bank.excluding_lookalikes({"m": np.array([[1.0, 0.0]], np.float32)}).identities
    ['b']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

# Mean surrogate cosine above which a target is taken to be the user (same person).
LOOKALIKE_COSINE = 0.5


def _as_embeddings(surrogate: str, value: object, count: int) -> np.ndarray:
    """``value`` as a C-contiguous float32 ``[count, D]`` array; TypeError/ValueError in one line.

    Example:
        >>> _as_embeddings("m", np.zeros((2, 3)), 2).dtype
        dtype('float32')
    """
    if not isinstance(value, np.ndarray):
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        raise TypeError(f"target embeddings for {surrogate!r} must be a numpy array, got {kind} "
                        "(convert torch tensors with .numpy() first)")
    if value.ndim != 2 or value.shape[0] != count:
        raise ValueError(f"target embeddings for {surrogate!r} have shape {value.shape}, expected ({count}, D)")
    return np.ascontiguousarray(value, dtype=np.float32)


@dataclass
class TargetBank:
    """K target identities and their unit embeddings per surrogate ({id: float32 [K, D]})."""

    identities: list[str]
    embeddings: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        self.identities = list(self.identities)
        self.embeddings = {k: _as_embeddings(k, v, len(self.identities)) for k, v in self.embeddings.items()}

    @property
    def size(self) -> int:
        return len(self.identities)

    def select(self, keep: Sequence[int]) -> "TargetBank":
        keep = list(keep)
        return TargetBank([self.identities[i] for i in keep], {k: v[keep] for k, v in self.embeddings.items()})

    def excluding_lookalikes(self, user: Mapping[str, np.ndarray], threshold: float = LOOKALIKE_COSINE) -> "TargetBank":
        """Drop targets whose mean surrogate cosine to the user's face exceeds the threshold."""
        sims = [0.0] * self.size
        for k, emb in self.embeddings.items():
            cos = emb @ user[k].T  # [K, 1]
            for i in range(self.size):
                sims[i] += float(cos[i, 0]) / len(self.embeddings)
        return self.select([i for i in range(self.size) if sims[i] <= threshold])

    def save(self, path: Path) -> None:
        """Write as .npz: ``identities`` plus one array per surrogate id."""
        arrays = {f"emb/{k}": v for k, v in self.embeddings.items()}
        np.savez(path, identities=np.array(self.identities), **arrays)

    @classmethod
    def load(cls, path: Path) -> "TargetBank":
        """Read a bank written by ``save`` (no pickles are loaded)."""
        with np.load(path, allow_pickle=False) as data:
            identities = [str(s) for s in data["identities"]]
            emb = {k[len("emb/"):]: data[k].astype(np.float32) for k in data.files if k.startswith("emb/")}
        return cls(identities, emb)
