"""Face-level protection with the torch reference (the counterpart of ``runtime.protector``).

Same interface as ``RuntimeProtector`` (detector, targets, config, ``embed_face``,
``protect_face``), built from the model zoo instead of a bundle. Embeddings are torch tensors.

Example:
    >>> protector = ReferenceProtector.load(["mobileface"])   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from edgecloak.errors import UsageError
from edgecloak.runtime.config import TIPIMConfig
from edgecloak.runtime.detect.mtcnn import MTCNNDetector
from edgecloak.runtime.targets import TargetBank

from ..recognizers import Recognizer
from ..zoo.registry import default_surrogates, ensure_detector
from .targets import default_target_bank, embed_face, geometries_of, target_bank_from_photos
from .tipim import TIPIM
from .view import FaceView


class ReferenceProtector:
    """Protects faces with torch autograd over the zoo's recognizers."""

    backend_description = f"torch {torch.__version__} reference (autograd, cpu)"

    def __init__(self, recognizers: Sequence[Recognizer], detector, targets: TargetBank, config: TIPIMConfig,
                 per_target_passes: bool = False):
        self.per_target_passes = per_target_passes  # the paper code's K backward passes (speed baseline)
        self.recognizers = list(recognizers)
        self.detector = detector
        self.targets = targets
        self.config = config
        self.last_result = None  # the AttackResult of the last face (gains: one per step run)

    @classmethod
    def load(
        cls,
        surrogates: Sequence[str] | None = None,
        target_photos: Sequence[str | Path] = (),
        num_targets: int | None = None,
        config: TIPIMConfig | None = None,
    ) -> "ReferenceProtector":
        """Recognizers and detector from the zoo (fetching and converting on first use), default targets."""
        ids = list(surrogates) if surrogates else default_surrogates()
        recognizers = [Recognizer.load(i) for i in ids]
        detector = MTCNNDetector.from_dir(ensure_detector())
        if target_photos:
            targets = target_bank_from_photos(recognizers, detector, [Path(p) for p in target_photos])
        else:
            targets = default_target_bank(recognizers, detector)
        if num_targets is not None:
            if num_targets < 1:
                raise UsageError(f"the number of targets must be >= 1, got {num_targets}")
            targets = targets.select(range(min(num_targets, targets.size)))
        return cls(recognizers, detector, targets, config or TIPIMConfig())

    @property
    def surrogate_ids(self) -> list[str]:
        return [r.id for r in self.recognizers]

    def embed_face(self, image: np.ndarray, landmarks: np.ndarray) -> dict[str, torch.Tensor]:
        return embed_face(image, landmarks, self.recognizers)

    def protect_face(self, original, current, landmarks, targets: TargetBank,
                     on_step: Callable[[int], None] | None = None, steps: int | None = None):
        """(box, protected region HxWx3 uint8, target index), see ``RuntimeProtector.protect_face``."""
        config = self.config if steps is None else replace(self.config, steps=steps)
        view = FaceView.around(landmarks, original.shape[:2], geometries_of(self.recognizers))
        x0, y0, x1, y1 = view.box

        def region(img: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(img[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()

        result = self.last_result = TIPIM(self.recognizers, config, self.per_target_passes).run(region(original), view, targets,
                                                         start=region(current), on_step=on_step)
        return view.box, result.region[0].permute(1, 2, 0).numpy().astype(np.uint8), result.target_index

    def close(self) -> None:
        pass
