"""The camera hook: capture frames, cloak every face, write them into an outbox, hand them to an uploader.

``source`` opens a camera index, a video file or a stream URL; ``outbox`` writes finished frames
atomically with a JSON sidecar and remembers what was uploaded; ``upload`` runs the user's upload
command on a bounded queue in the background; ``session`` ties them to a ``Cloaker``.

Example:
    >>> from edgecloak.camera import CameraSession, RunSettings                       # doctest: +SKIP
    >>> CameraSession(cloaker, RunSettings(source="0", outbox=Path("outbox"))).run()  # doctest: +SKIP
"""

from .outbox import Outbox
from .session import CameraSession, RunSettings
from .source import FrameSource
from .upload import Uploader

__all__ = ["CameraSession", "FrameSource", "Outbox", "RunSettings", "Uploader"]
