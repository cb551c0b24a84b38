"""Face detection: faces with five landmarks in photo coordinates (torch-free).

Example:
    >>> from edgecloak.runtime.detect import MTCNNDetector, DetectedFace
    >>> faces = MTCNNDetector.from_dir("models/mtcnn").detect(rgb)  # doctest: +SKIP
"""

from .mtcnn import DetectedFace, MTCNNDetector

__all__ = ["DetectedFace", "MTCNNDetector"]
