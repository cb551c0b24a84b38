"""edgecloak: on-device face cloaking with TIP-IM adversarial identity masks.

Example:
    >>> from edgecloak import Cloaker          # doctest: +SKIP
    >>> Cloaker.load().protect_file("me.jpg", "cloaked/me.png")   # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"
_SDK = ("Cloaker", "Result", "FaceReport", "SafetyPolicy", "WarmStart")
__all__ = [*_SDK, "__version__"]


def __getattr__(name: str):
    # Lazy: `import edgecloak` (and so the CLI's start) stays light until the SDK is used.
    if name in _SDK:
        from edgecloak import cloaker

        return getattr(cloaker, name)
    raise AttributeError(f"module 'edgecloak' has no attribute {name!r}")
