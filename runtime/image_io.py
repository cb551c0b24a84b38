"""Safe photo decoding and atomic, metadata-free writing.

Reading (``load_image``) turns whatever a user hands us into one thing: an H x W x 3 uint8 RGB
array, upright (EXIF orientation applied to the pixels), with every bit of metadata (EXIF, GPS,
ICC, XMP, comments) left behind. Anything that cannot be read safely -- empty, truncated, not an
image, too large -- raises ``InputImageError`` with a one-line message naming the file.

Writing: ``OutputFormat`` encodes an array into the bytes of a PNG or JPEG with no metadata;
``save_image_atomic`` writes them through ``atomic.write_bytes_atomic``, which never leaves a
half-written file where the output should be.

Decisions (documented here because callers rely on them):

- Formats read: JPEG (including the MPO multi-picture JPEGs of phones), PNG, WebP, BMP, TIFF, GIF
  and PPM. Other formats Pillow knows (EPS would start Ghostscript, for one) are refused. Multi-frame
  files give their first frame.
- Transparency is composited onto white (what most viewers show), not dropped: the RGB values
  under fully transparent pixels are often junk that the author never saw.
- 16-bit greyscale (``I;16*``) is scaled to 8 bits (``v / 257``). 32-bit ``I``/``F`` images are
  treated as 16-bit when any value exceeds 255, else as 8-bit, and clipped to range.
- Colour profiles (ICC) are dropped, not applied: values are taken as sRGB.
- Size limit: ``MAX_PIXELS`` (50 megapixels) by default, checked from the header before any pixel
  is decoded, so a tiny file that declares a huge canvas costs nothing. It is below Pillow's own
  bomb threshold (89 MP warns, 179 MP raises), so every image Pillow would warn about is refused;
  Pillow's warning, if shown, is followed by our error (and is itself turned into that error when
  warnings are errors). Pillow's global ``Image.MAX_IMAGE_PIXELS`` is left alone.

Example:
    >>> import numpy as np
    >>> from edgecloak.runtime.image_io import load_image, save_image_atomic
    >>> out = save_image_atomic("/tmp/example.png", np.zeros((4, 6, 3), np.uint8))  # doctest: +SKIP
    >>> load_image(out).shape  # doctest: +SKIP
    (4, 6, 3)
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edgecloak.errors import InputImageError, OutputError, UsageError

from .atomic import write_bytes_atomic

# 50 MP covers every phone and most DSLR photos (a 48 MP phone sensor is 8064 x 6048 = 48.8 MP)
# while refusing canvases that would take gigabytes to decode.
MAX_PIXELS = 50_000_000

# Formats we decode. A whitelist, because Pillow's long tail of format plugins is attack surface
# (and EPS hands the file to Ghostscript). Phone MPO files open through the JPEG plugin.
READ_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")

# Output formats by file extension. JPEG only when asked for by name: it is lossy and would blur
# the protective mask; PNG keeps it bit-exact.
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
DEFAULT_JPEG_QUALITY = 95

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def load_image(source: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a photo into an upright H x W x 3 uint8 RGB array with no metadata.

    Args:
        source: a file path, or the file's bytes.
        max_pixels: refuse images whose declared width x height exceeds this (checked from the
            header, before decoding).

    Raises:
        InputImageError: missing, empty, truncated, not a (supported) image, or too large.

    Example:
        >>> rgb = load_image("photo.jpg")  # doctest: +SKIP
        >>> rgb.dtype, rgb.ndim  # doctest: +SKIP
        (dtype('uint8'), 3)
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = "<image bytes>"
        if len(source) == 0:
            raise InputImageError(f"{name}: empty (0 bytes); pass the bytes of a JPEG or PNG photo")
        fp: io.BytesIO | Path = io.BytesIO(bytes(source))
    else:
        path = Path(source)
        name = str(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise InputImageError(f"{name}: cannot read ({exc.strerror or exc}); check the path") from exc
        if not path.is_file():
            raise InputImageError(f"{name}: not a file; pass a photo file (JPEG, PNG, ...)")
        if size == 0:
            raise InputImageError(f"{name}: empty file (0 bytes); the copy or download probably failed, get the photo again")
        fp = path

    try:
        img = Image.open(fp, formats=READ_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # warning: under -W error
        raise InputImageError(f"{name}: image too large ({exc}); downscale it below {max_pixels:,} pixels") from exc
    except Image.UnidentifiedImageError as exc:
        raise InputImageError(
            f"{name}: not an image in a supported format; use a JPEG, PNG, WebP, BMP, TIFF or GIF photo"
        ) from exc
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
        raise InputImageError(
            f"{name}: not a readable image ({_short(exc)}); use a JPEG, PNG, WebP, BMP, TIFF or GIF photo"
        ) from exc

    with img:
        _check_size(name, img.size, max_pixels)  # header only: nothing decoded yet
        try:
            img.load()  # decode everything now, so truncated data fails here and not later
            _check_size(name, img.size, max_pixels)  # some formats pick their frame size on load
            upright = ImageOps.exif_transpose(img)
            return _to_rgb8(upright)
        except InputImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise InputImageError(f"{name}: image too large ({exc}); downscale it below {max_pixels:,} pixels") from exc
        except Exception as exc:
            raise InputImageError(
                f"{name}: damaged or truncated image ({_short(exc)}); get an intact copy of the photo"
            ) from exc


@dataclass(frozen=True)
class OutputFormat:
    """How an output is encoded: lossless PNG, or JPEG at ``jpeg_quality`` (1..100, 4:4:4 chroma).

    The SDK encodes a protected photo with it and runs the self-check on the decoded bytes, so a
    lossy format that erodes the mask is caught before anything is written.

    Example:
        >>> OutputFormat.for_path("out/me.jpg", 90)
        OutputFormat(kind='jpeg', jpeg_quality=90)
        >>> OutputFormat().lossy
        False
    """

    kind: str = "png"  # "png" | "jpeg"
    jpeg_quality: int = DEFAULT_JPEG_QUALITY

    def __post_init__(self) -> None:
        if self.kind not in ("png", "jpeg"):
            raise UsageError(f"unknown output format {self.kind!r}; choose png or jpg")
        if isinstance(self.jpeg_quality, bool) or not isinstance(self.jpeg_quality, int) \
                or not 1 <= self.jpeg_quality <= 100:
            raise UsageError(f"--jpeg-quality must be a whole number in 1..100, got {self.jpeg_quality!r}")

    @classmethod
    def named(cls, name: str, jpeg_quality: int | None = None) -> "OutputFormat":
        """From a CLI ``--format`` (``png``, ``jpg`` or ``jpeg``) and ``--jpeg-quality``."""
        kind = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg"}.get(name.lower())
        if kind is None:
            raise UsageError(f"unknown output format {name!r}; choose png or jpg")
        return cls(kind, DEFAULT_JPEG_QUALITY if jpeg_quality is None else jpeg_quality)

    @classmethod
    def for_path(cls, path: str | os.PathLike[str], jpeg_quality: int | None = None) -> "OutputFormat":
        """The format an output path's extension asks for (``OutputError`` for other extensions)."""
        suffix = Path(path).suffix.lower()
        if suffix not in _WRITE_FORMATS:
            raise OutputError(f"{path}: unsupported output extension {suffix!r}; use .png (lossless) or .jpg")
        return cls.named(suffix[1:], jpeg_quality)

    @property
    def lossy(self) -> bool:
        return self.kind == "jpeg"

    @property
    def suffix(self) -> str:
        return ".jpg" if self.lossy else ".png"

    def describe(self) -> str:
        return f"JPEG quality {self.jpeg_quality}" if self.lossy else "lossless PNG"

    def encode(self, rgb: np.ndarray) -> bytes:
        """The file bytes of an H x W x 3 uint8 RGB array, with no metadata at all."""
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
            raise ValueError(f"expected an H x W x 3 uint8 array, got {getattr(rgb, 'dtype', type(rgb))} "
                             f"{getattr(rgb, 'shape', '')}")
        if self.lossy:
            options: dict[str, object] = {"quality": self.jpeg_quality, "subsampling": 0, "optimize": True}
        else:
            options = {"compress_level": 6}
        buffer = io.BytesIO()
        try:
            # A fresh Image from the array carries no EXIF/ICC/text: nothing private is written.
            Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(buffer, format=_WRITE_FORMATS[self.suffix],
                                                                        **options)
        except Exception as exc:  # Pillow raises OSError, ValueError, ... from its encoders
            raise OutputError(f"could not encode the image as {self.describe()} ({_short(exc)})") from exc
        return buffer.getvalue()


def save_image_atomic(path: str | os.PathLike[str], rgb: np.ndarray, jpeg_quality: int | None = None,
                      *, overwrite: bool = True) -> Path:
    """Write an RGB uint8 array to ``path`` atomically, without metadata; return the path.

    The format follows the extension: ``.png`` (lossless, the recommended default) or
    ``.jpg``/``.jpeg`` (quality ``jpeg_quality``, default 95, 4:4:4 chroma so colour detail of the
    mask is not halved; ``jpeg_quality`` is ignored for PNG). Written through
    ``atomic.write_bytes_atomic``: a failure leaves ``path`` as it was and no temporary file;
    ``overwrite=False`` never replaces an existing file.

    Raises:
        OutputError: unsupported extension, missing or read-only folder, disk full, file exists, ...
        UsageError: ``jpeg_quality`` outside 1..100.
        ValueError: ``rgb`` is not an H x W x 3 uint8 array (a programming error).

    Example:
        >>> save_image_atomic("out/photo.cloaked.png", rgb)  # doctest: +SKIP
        PosixPath('out/photo.cloaked.png')
    """
    data = OutputFormat.for_path(path, jpeg_quality).encode(rgb)
    return write_bytes_atomic(path, data, overwrite=overwrite)


def _check_size(name: str, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputImageError(f"{name}: image has no pixels ({width}x{height}); use another photo")
    if width * height > max_pixels:
        raise InputImageError(
            f"{name}: image too large ({width}x{height} = {width * height:,} pixels, limit {max_pixels:,}); "
            "downscale it first"
        )


def _to_rgb8(img: Image.Image) -> np.ndarray:
    """Any decoded Pillow image -> contiguous H x W x 3 uint8 RGB (alpha composited on white)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        grey = np.rint(np.asarray(img, dtype=np.float32) / 257.0).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if values.size and np.nanmax(values) > 255:
            values = values / 257.0  # a 16-bit source widened to 32 bits
        grey = np.rint(np.clip(np.nan_to_num(values), 0, 255)).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    has_alpha = mode in _ALPHA_MODES or "transparency" in img.info
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        # Integer "over" on white, rounded: out = (c * a + 255 * (255 - a)) / 255.
        out = (rgba[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return np.ascontiguousarray(out.astype(np.uint8))
    # np.array copies: np.asarray would hand out a read-only view of Pillow's buffer.
    return np.array(img.convert("RGB"), dtype=np.uint8, order="C")


def _short(exc: BaseException) -> str:
    """One line of an exception for user-facing messages."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
