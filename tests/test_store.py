"""Image store: every kind of bad input gets a one-line reason and leaves nothing behind."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flenwheel.core.config import StoreSettings
from flenwheel.store.objects import ImageRejected, encode_png, ingest_file, load_image, normalise, object_path
from tests.conftest import encode, noise_image, store_files

SETTINGS = StoreSettings()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that claims enormous dimensions but carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


BAD_INPUTS = {
    "zero-byte": ("empty.jpg", lambda: b"", "empty file"),
    "truncated-jpeg": ("cut.jpg", lambda: encode(noise_image(1, (400, 400)), "JPEG")[:3000], "truncated"),
    "truncated-png": ("cut.png", lambda: encode(noise_image(2, (400, 400)))[:5000], "truncated"),
    "text-as-jpeg": ("notes.jpg", lambda: b"this is a shopping list, not a photo\n" * 20, "not an image"),
    "unsupported-gif": (
        "anim.gif",
        lambda: encode(noise_image(3, (200, 200)).convert("P"), "GIF"),
        "unsupported format GIF",
    ),
    "bomb": ("bomb.png", lambda: huge_png_header(100_000, 100_000), "pixel"),
    "too-small": ("tiny.png", lambda: encode(noise_image(4, (64, 300))), "too small"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_rejected_with_reason_and_stores_nothing(case: str, tmp_path: Path, write_file) -> None:
    name, make, expected = BAD_INPUTS[case]
    path = write_file(name, make())
    root = tmp_path / "data"
    with pytest.raises(ImageRejected) as info:
        ingest_file(root, path, SETTINGS)
    reason = str(info.value)
    assert expected in reason
    assert "\n" not in reason
    assert store_files(root) == []


def test_bomb_limit_is_configurable(tmp_path: Path, write_file) -> None:
    path = write_file("big.png", encode(Image.new("RGB", (1500, 1000), (10, 20, 30))))
    strict = StoreSettings(max_pixels=1_000_000)
    with pytest.raises(ImageRejected, match="exceeds the limit of 1,000,000"):
        ingest_file(tmp_path, path, strict)
    stored = ingest_file(tmp_path, path, SETTINGS)
    assert (stored.width, stored.height) == (1500, 1000)


def test_missing_path_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected, match="no such file"):
        ingest_file(tmp_path, tmp_path / "nope.jpg", SETTINGS)
    with pytest.raises(ImageRejected, match="folder"):
        ingest_file(tmp_path, tmp_path, SETTINGS)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path, write_file) -> None:
    cmyk = Image.new("CMYK", (200, 200), (0, 255, 255, 0))  # pure red in CMYK
    path = write_file("cmyk.jpg", encode(cmyk, "JPEG", quality=95))
    stored = ingest_file(tmp_path, path, SETTINGS)
    img = load_image(tmp_path, stored.image_id)
    assert img.mode == "RGB"
    r, g, b = img.getpixel((100, 100))
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path, write_file) -> None:
    arr = np.zeros((150, 300), dtype=np.uint16)
    arr[:, :100] = 65535
    arr[:, 100:200] = 32896  # 128 * 257
    path = write_file("deep.png", encode(Image.fromarray(arr)))
    assert Image.open(path).mode.startswith("I")
    img = load_image(tmp_path, ingest_file(tmp_path, path, SETTINGS).image_id)
    assert img.getpixel((50, 75)) == (255, 255, 255)
    assert img.getpixel((150, 75)) == (128, 128, 128)
    assert img.getpixel((250, 75)) == (0, 0, 0)


def test_rgba_png_is_flattened_on_the_configured_background(tmp_path: Path, write_file) -> None:
    rgba = Image.new("RGBA", (200, 200), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 100, 200))
    path = write_file("alpha.png", encode(rgba))
    img = load_image(tmp_path, ingest_file(tmp_path, path, SETTINGS).image_id)
    assert img.getpixel((50, 100)) == (0, 0, 255)
    assert img.getpixel((150, 100)) == (255, 255, 255)
    grey = StoreSettings(alpha_background=(128, 128, 128))
    img2 = load_image(tmp_path, ingest_file(tmp_path, path, grey).image_id)
    assert img2.getpixel((150, 100)) == (128, 128, 128)


def test_exif_rotated_jpeg_is_stored_upright(tmp_path: Path, write_file) -> None:
    # Sensor image 300 wide x 200 high, red on its left half; orientation 6 = rotate 90 degrees clockwise.
    raw = Image.new("RGB", (300, 200), (0, 0, 0))
    raw.paste((255, 0, 0), (0, 0, 150, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write_file("rotated.jpg", encode(raw, "JPEG", exif=exif.tobytes(), quality=95))
    stored = ingest_file(tmp_path, path, SETTINGS)
    img = load_image(tmp_path, stored.image_id)
    assert img.size == (200, 300)
    assert img.getpixel((100, 50))[0] > 200  # the left half is now on top
    assert img.getpixel((100, 250))[0] < 50
    assert "exif" not in Image.open(object_path(tmp_path, stored.image_id)).info


def test_same_picture_twice_is_one_image(tmp_path: Path, write_file) -> None:
    img = noise_image(7, (300, 200))
    a = write_file("a.png", encode(img))
    b = write_file("b.png", encode(img, compress_level=1))  # different bytes, same pixels
    s1 = ingest_file(tmp_path, a, SETTINGS)
    s2 = ingest_file(tmp_path, b, SETTINGS)
    assert s1.image_id == s2.image_id and s1.created and not s2.created
    data = object_path(tmp_path, s1.image_id).read_bytes()
    assert hashlib.sha256(data).hexdigest() == s1.image_id
    assert s1.relpath == f"objects/{s1.image_id[:2]}/{s1.image_id}.png"
    assert len(store_files(tmp_path)) == 1


def test_longest_side_is_capped_never_upscaled(tmp_path: Path, write_file) -> None:
    path = write_file("wide.png", encode(Image.new("RGB", (3000, 1500), (1, 2, 3))))
    stored = ingest_file(tmp_path, path, StoreSettings(max_side=1024))
    assert (stored.width, stored.height) == (1024, 512)
    small = write_file("small.png", encode(Image.new("RGB", (300, 200), (1, 2, 3))))
    assert ingest_file(tmp_path, small, StoreSettings(max_side=1024)).width == 300


def test_png_encoding_is_deterministic() -> None:
    img = noise_image(9, (256, 256))
    assert encode_png(img) == encode_png(img.copy())


def test_real_edge_photos_normalise(faces: Path) -> None:
    for path in sorted((faces / "edge").iterdir()):
        img = normalise(path.read_bytes(), SETTINGS)
        assert img.mode == "RGB"
