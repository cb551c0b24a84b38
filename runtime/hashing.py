"""sha256 of files and open streams: the one hashing helper (bundles, fetched packages, engines, frames).

Example:
    >>> import io
    >>> sha256_stream(io.BytesIO(b""))[:12]
    'e3b0c44298fc'
"""

from __future__ import annotations

import hashlib
import os
from typing import BinaryIO, Callable

CHUNK = 1 << 20  # 1 MiB reads: fast, and a multi-GB file never sits in memory


def sha256_stream(fh: BinaryIO, on_block: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of everything left in ``fh``; ``on_block(n)`` after each block (progress bars).

    Example:
        >>> with open(path, "rb") as fh: sha256_stream(fh)          # doctest: +SKIP
        '9f86d081884c7d65...'
    """
    digest = hashlib.sha256()
    for block in iter(lambda: fh.read(CHUNK), b""):
        digest.update(block)
        if on_block is not None:
            on_block(len(block))
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes.

    Example:
        >>> sha256_file("bundle/targets.npz")[:12]                 # doctest: +SKIP
        '3b1f0c9d2e7a'
    """
    with open(path, "rb") as fh:
        return sha256_stream(fh)
