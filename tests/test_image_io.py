"""Safe decoding (orientation, colour modes, hostile files) and atomic, metadata-free writing."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgecloak.errors import InputImageError, OutputError, UsageError
from edgecloak.export.zoo.fetch import member_path
from edgecloak.runtime import image_io
from edgecloak.runtime.image_io import load_image, save_image_atomic


def _encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _gradient(width: int = 40, height: int = 24) -> np.ndarray:
    """An image whose orientation can be read back: red grows left->right, green top->bottom."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.stack([x, y, np.full_like(x, 60)], axis=2).astype(np.uint8)


# -- decoding ------------------------------------------------------------------------------------


def test_real_photo_decodes(tmp_path: Path) -> None:
    rgb = load_image(member_path("insightface", "insightface/data/images/t1.jpg"))
    assert rgb.shape == (886, 1280, 3) and rgb.dtype == np.uint8
    assert rgb.flags.writeable and rgb.flags.c_contiguous


@pytest.mark.parametrize(
    "orientation, expect",
    [
        (1, lambda a: a),
        (3, lambda a: a[::-1, ::-1]),  # rotated 180
        (6, lambda a: np.rot90(a, k=-1)),  # camera held rotated: shown turned 90 clockwise
        (8, lambda a: np.rot90(a, k=1)),
    ],
)
def test_exif_orientation_is_applied_to_pixels(tmp_path: Path, orientation: int, expect) -> None:
    pixels = _gradient()
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    exif[0x010F] = "SecretCam"  # Make: metadata that must not survive
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(_encode(Image.fromarray(pixels), "JPEG", quality=98, exif=exif.tobytes()))
    rgb = load_image(path)
    want = expect(pixels)
    assert rgb.shape == want.shape
    assert np.abs(rgb.astype(int) - want).mean() < 3  # JPEG noise only


_MODES = {
    "grey": lambda a: Image.fromarray(a).convert("L"),
    "bilevel": lambda a: Image.fromarray(a).convert("1"),
    "palette": lambda a: Image.fromarray(a).convert("P"),
    "cmyk": lambda a: Image.fromarray(a).convert("CMYK"),
    "grey+alpha": lambda a: Image.fromarray(a).convert("LA"),
    "rgba": lambda a: Image.fromarray(a).convert("RGBA"),
    "16-bit": lambda a: Image.fromarray(a.astype(np.uint16)[:, :, 0] * 257),
}
_STORABLE = {
    "PNG": ["grey", "bilevel", "palette", "grey+alpha", "rgba", "16-bit"],
    "TIFF": list(_MODES),
    "JPEG": ["grey", "cmyk"],
    "WEBP": ["rgba"],
    "GIF": ["palette"],
    "BMP": ["bilevel", "palette"],
}


@pytest.mark.parametrize("fmt, mode", [(f, m) for f, modes in _STORABLE.items() for m in modes])
def test_every_colour_mode_becomes_rgb8(fmt: str, mode: str) -> None:
    rgb = load_image(_encode(_MODES[mode](_gradient()), fmt))
    assert rgb.shape == (24, 40, 3) and rgb.dtype == np.uint8
    assert rgb.flags.writeable


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    grey16 = (np.arange(24 * 40).reshape(24, 40) * 68).astype(np.uint16)  # up to 65212
    rgb = load_image(_encode(Image.fromarray(grey16), "PNG"))
    np.testing.assert_array_equal(rgb[:, :, 0], np.rint(grey16 / 257.0).astype(np.uint8))
    assert rgb[:, :, 0].max() > 250  # clipping would have saturated almost everything


def test_transparency_is_composited_on_white() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)  # hidden colour under transparent pixels
    rgba[:4, :, 3] = 0  # top half transparent
    rgba[4:, :, 3] = 255  # bottom half opaque
    rgb = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (rgb[:4] == 255).all()
    assert (rgb[4:] == (10, 200, 30)).all()


def test_metadata_is_dropped_on_save(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    src = tmp_path / "in.jpg"
    src.write_bytes(_encode(Image.fromarray(_gradient()), "JPEG", exif=exif.tobytes()))
    for name in ("out.png", "out.jpg"):
        out = save_image_atomic(tmp_path / name, load_image(src))
        data = out.read_bytes()
        assert b"SecretCam" not in data and b"Exif" not in data
        with Image.open(out) as img:
            assert not img.getexif()


# -- hostile input -------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(InputImageError, match="empty"):
        load_image(path)
    with pytest.raises(InputImageError, match="empty"):
        load_image(b"")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(InputImageError, match="not a file"):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match=r"cut\.") as err:
        load_image(path)
    assert "\n" not in str(err.value)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n" * 20)
    with pytest.raises(InputImageError, match="not an image"):
        load_image(path)


def test_refused_format(tmp_path: Path) -> None:
    # Pillow can read ICO, but it is not on the list of photo formats we decode.
    data = _encode(Image.fromarray(_gradient(32, 32)), "ICO")
    with pytest.raises(InputImageError):
        load_image(data)


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares a huge canvas (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# 64 MP: over our limit; 100 MP: Pillow warns too; 900 MP and 3.6 GP: Pillow refuses as well.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [8000, 10000, 30000, 60000])
def test_decompression_bomb_header_is_refused(tmp_path: Path, side: int) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))
    assert path.stat().st_size < 200
    with pytest.raises(InputImageError, match="too large"):
        load_image(path)


def test_decompression_bomb_warning_as_error_is_still_an_input_error(tmp_path: Path) -> None:
    import warnings

    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(10000, 10000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputImageError, match="too large"):
            load_image(path)


def test_pixel_limit_is_adjustable() -> None:
    data = _encode(Image.fromarray(_gradient()), "PNG")
    with pytest.raises(InputImageError, match="too large"):
        load_image(data, max_pixels=500)
    assert load_image(data, max_pixels=24 * 40).shape == (24, 40, 3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=2048))
def test_random_bytes_only_ever_raise_input_image_error(data: bytes) -> None:
    try:
        rgb = load_image(data)
    except InputImageError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


_SEED_PNG = _encode(Image.fromarray(_gradient(6, 5)), "PNG")
_SEED_JPEG = _encode(Image.fromarray(_gradient(9, 7)), "JPEG")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([_SEED_PNG, _SEED_JPEG]), st.data())
def test_corrupted_real_files_only_ever_raise_input_image_error(seed: bytes, data: st.DataObject) -> None:
    # Random bytes rarely get past the format sniffing; flipping bytes of a real file reaches the decoders.
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 8))):
        buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(buf)))
    try:
        rgb = load_image(bytes(buf[:cut]))
    except InputImageError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


# -- writing -------------------------------------------------------------------------------------


def test_png_round_trip_is_lossless(tmp_path: Path) -> None:
    noise = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = save_image_atomic(tmp_path / "x.png", noise)
    np.testing.assert_array_equal(load_image(out), noise)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temporary file left behind


def test_jpeg_by_extension_with_quality(tmp_path: Path) -> None:
    pixels = _gradient(64, 48)
    hi = save_image_atomic(tmp_path / "hi.JPEG", pixels)
    lo = save_image_atomic(tmp_path / "lo.jpg", pixels, jpeg_quality=30)
    assert hi.read_bytes()[:3] == b"\xff\xd8\xff"
    assert np.abs(load_image(hi).astype(int) - pixels).mean() < np.abs(load_image(lo).astype(int) - pixels).mean()


def test_overwrite_is_atomic_and_keeps_permissions(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    save_image_atomic(path, np.zeros((4, 4, 3), np.uint8))
    os.chmod(path, 0o640)
    save_image_atomic(path, np.full((4, 4, 3), 9, np.uint8))
    assert (load_image(path) == 9).all()
    assert path.stat().st_mode & 0o777 == 0o640


def test_unwritable_folder_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write") as err:
        save_image_atomic(blocker / "out.png", np.zeros((4, 4, 3), np.uint8))
    assert "\n" not in str(err.value)
    with pytest.raises(OutputError):
        save_image_atomic(tmp_path / "missing" / "out.png", np.zeros((4, 4, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_failed_rename_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As root, chmod cannot make a folder read-only; fail the final rename instead (what a full
    # disk or a read-only remount would look like at that step).
    path = tmp_path / "out.png"
    path.write_bytes(b"the original")

    def refuse(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_io.os, "replace", refuse)
    with pytest.raises(OutputError, match="No space left"):
        save_image_atomic(path, np.zeros((4, 4, 3), np.uint8))
    assert path.read_bytes() == b"the original"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_failed_encode_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half")  # type: ignore[attr-defined]
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OutputError):
        save_image_atomic(tmp_path / "out.png", np.zeros((4, 4, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="extension"):
        save_image_atomic(tmp_path / "out.gif", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError):
        save_image_atomic(tmp_path / "out.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        save_image_atomic(tmp_path / "out.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(UsageError, match="1..100"):  # the user's flag: a one-line usage error
        save_image_atomic(tmp_path / "out.jpg", np.zeros((4, 4, 3), np.uint8), jpeg_quality=0)
    assert list(tmp_path.iterdir()) == []


def _jpeg_segments(data: bytes) -> list[int]:
    """The marker bytes of a JPEG's header segments (APPn, DQT, ...) up to the scan."""
    markers, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        markers.append(marker)
        if marker == 0xDA:  # start of scan: the image data follows
            break
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return markers


def test_gps_xmp_and_app_segments_never_reach_the_output(tmp_path: Path) -> None:
    """Location, XMP and any APPn segment (where EXIF thumbnails live) are left behind."""
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"
    gps = exif.get_ifd(0x8825)
    gps[2] = (52.0, 31.0, 12.0)  # GPSLatitude
    gps[1] = "N"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description creator="SecretPerson"/></rdf:RDF></x:xmpmeta>'
    src = tmp_path / "in.jpg"
    Image.fromarray(_gradient()).save(src, "JPEG", exif=exif.tobytes(), xmp=xmp)
    raw = src.read_bytes()
    assert b"SecretPerson" in raw and 0xE1 in _jpeg_segments(raw)  # the source really carries them
    out = save_image_atomic(tmp_path / "out.jpg", load_image(src)).read_bytes()
    assert b"SecretPerson" not in out and b"SecretCam" not in out
    assert not {m for m in _jpeg_segments(out) if 0xE1 <= m <= 0xEF}  # no APP1..APP15: no EXIF, XMP, thumbnail
