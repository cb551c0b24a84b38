"""The camera hook: capture frames, cloak every face, write them into an outbox, hand them to an uploader.

``source`` opens a camera index, a video file or a stream URL; ``outbox`` writes finished frames
(the exact bytes the cloaker self-checked) atomically with a JSON sidecar holding their sha256,
remembers what was uploaded, and verifies that a frame is one it wrote; ``upload`` runs the user's
upload command (no shell) on a bounded queue in the background; ``session`` ties them to a
``Cloaker`` and ``raise_for_outcome`` turns a session's summary into its exit status.

Example:
    >>> from edgecloak.camera import CameraSession, RunSettings                       # doctest: +SKIP
    >>> CameraSession(cloaker, RunSettings(source="0", outbox=Path("outbox"))).run()  # doctest: +SKIP
"""

from .outbox import Outbox, OutboxScan
from .session import CameraSession, RunSettings, raise_for_outcome
from .source import FrameSource
from .upload import Uploader

__all__ = ["CameraSession", "FrameSource", "Outbox", "OutboxScan", "RunSettings", "Uploader", "raise_for_outcome"]
