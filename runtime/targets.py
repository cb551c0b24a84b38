"""Target identities for TIP-IM: K faces of people who are not the user, embedded per surrogate.

One container for both engines: the embeddings may be numpy arrays (runtime, bundles) or torch
tensors (reference); ``select`` and ``excluding_lookalikes`` only use indexing and ``@``.

Example:
    >>> bank = TargetBank(["a", "b"], {"m": np.eye(2, dtype=np.float32)})
    >>> bank.excluding_lookalikes({"m": np.array([[1.0, 0.0]], np.float32)}).identities
    ['b']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# Mean surrogate cosine above which a target is taken to be the user (same person).
LOOKALIKE_COSINE = 0.5


@dataclass
class TargetBank:
    """K target identities and their unit embeddings per surrogate ({id: [K, D]})."""

    identities: list[str]
    embeddings: dict[str, Any]

    @property
    def size(self) -> int:
        return len(self.identities)

    def select(self, keep: Sequence[int]) -> "TargetBank":
        keep = list(keep)
        return TargetBank([self.identities[i] for i in keep], {k: v[keep] for k, v in self.embeddings.items()})

    def excluding_lookalikes(self, user: dict[str, Any], threshold: float = LOOKALIKE_COSINE) -> "TargetBank":
        """Drop targets whose mean surrogate cosine to the user's face exceeds the threshold."""
        sims = [0.0] * self.size
        for k, emb in self.embeddings.items():
            cos = emb @ user[k].T  # [K, 1]
            for i in range(self.size):
                sims[i] += float(cos[i, 0]) / len(self.embeddings)
        return self.select([i for i in range(self.size) if sims[i] <= threshold])

    def numpy(self) -> "TargetBank":
        """The same bank with float32 numpy embeddings (from torch tensors or arrays)."""
        conv = {k: np.ascontiguousarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float32)
                for k, v in self.embeddings.items()}
        return TargetBank(list(self.identities), conv)

    def save(self, path: Path) -> None:
        """Write as .npz: ``identities`` plus one array per surrogate id."""
        bank = self.numpy()
        arrays = {f"emb/{k}": v for k, v in bank.embeddings.items()}
        np.savez(path, identities=np.array(bank.identities), **arrays)

    @classmethod
    def load(cls, path: Path) -> "TargetBank":
        """Read a bank written by ``save`` (no pickles are loaded)."""
        with np.load(path, allow_pickle=False) as data:
            identities = [str(s) for s in data["identities"]]
            emb = {k[len("emb/"):]: data[k].astype(np.float32) for k in data.files if k.startswith("emb/")}
        return cls(identities, emb)
