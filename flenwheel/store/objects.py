"""Content-addressed image files: validate, normalise, hash, place.

Every image in flenwheel is an 8-bit RGB PNG under ``<root>/objects/<2 hex>/<sha256>.png`` whose name is
the sha256 of its bytes, so the same picture stored twice is one file and one catalog row.

Normalisation on ingest, in this order:
1. refuse anything that is not a supported, fully decodable image within the pixel limit;
2. apply the EXIF orientation, so the stored image is upright and carries no EXIF;
3. convert to 8-bit RGB: 16-bit channels are scaled (not clipped), CMYK and palette images converted,
   and transparency flattened onto ``StoreSettings.alpha_background`` (white by default);
4. downscale so the longest side is at most ``StoreSettings.max_side`` (never upscale);
5. encode as PNG with fixed settings and no metadata, so equal pixels give equal bytes.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from flenwheel.core.config import StoreSettings
from flenwheel.core.errors import FlenwheelError
from flenwheel.core.files import atomic_write

# zlib level 1: deterministic like any level, several times faster than 6 for ~10% more bytes on photos.
PNG_COMPRESS_LEVEL = 1
OBJECTS = "objects"  # the store's folder under the data root
MASKS = "masks"  # edit-region masks (flenwheel.editing.checks), content-addressed like the images


class ImageRejected(FlenwheelError, ValueError):
    """The file cannot become a stored image; ``str(err)`` is the one-line reason."""


@dataclass(frozen=True)
class StoredImage:
    image_id: str
    relpath: str  # relative to the data root, so a root can move
    width: int
    height: int
    created: bool  # False when the identical image was already in the store


def object_relpath(image_id: str) -> str:
    return f"{OBJECTS}/{image_id[:2]}/{image_id}.png"


def object_path(root: Path, image_id: str) -> Path:
    return root / object_relpath(image_id)


# --------------------------------------------------------------------------- decoding


def _open_checked(data: bytes, name: str, settings: StoreSettings) -> Image.Image:
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    # Pillow's own bomb guard warns at MAX_IMAGE_PIXELS and raises at twice that; ours is configurable
    # and checked from the header before any pixel is decoded.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise ImageRejected(f"image dimensions exceed the pixel limit ({settings.max_pixels:,})") from None
        except UnidentifiedImageError:
            raise ImageRejected("not an image (unrecognised file content)") from None
        except OSError as e:
            raise ImageRejected(f"unreadable image header ({e})") from None
    if img.format not in settings.formats:
        raise ImageRejected(f"unsupported format {img.format}; allowed: {', '.join(settings.formats)}")
    w, h = img.size
    if w * h > settings.max_pixels:
        raise ImageRejected(
            f"{w}x{h} = {w * h:,} pixels exceeds the limit of {settings.max_pixels:,} (decompression bomb?)"
        )
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # already checked against our own limit above
        img.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected(f"corrupt or truncated image data ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    return img


def _to_rgb8(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        # 16-bit data scaled to 8 bits, not clipped: 65535 -> 255.
        scale = 257.0 if arr.max(initial=0) > 255 or mode.startswith("I;16") else 1.0
        arr = np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
        arr = np.clip(np.rint((arr - lo) / max(hi - lo, 1e-12) * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (*background, 255))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return img.convert("RGB")  # L, P, CMYK (Pillow undoes Adobe's inverted CMYK), YCbCr, RGB


def normalise(data: bytes, settings: StoreSettings, name: str = "<bytes>") -> Image.Image:
    """Decode, validate and normalise one image file's bytes (see the module docstring)."""
    img = _open_checked(data, name, settings)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:
        pass
    img = _to_rgb8(img, settings.alpha_background)
    w, h = img.size
    if min(w, h) < settings.min_side:
        raise ImageRejected(f"too small: {w}x{h}, the shortest side must be at least {settings.min_side} px")
    if max(w, h) > settings.max_side:
        img = img.copy()
        img.thumbnail((settings.max_side, settings.max_side), Image.Resampling.LANCZOS)
    return img


def encode_png(img: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """Deterministic PNG bytes for an RGB image (fixed compression; no metadata but the ``text`` chunks given,
    in their order)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False, pnginfo=info)
    return buf.getvalue()


# --------------------------------------------------------------------------- placing


@dataclass(frozen=True)
class EncodedImage:
    """An image as the store keeps it (deterministic PNG bytes) and its size: what travels between a cluster worker
    and the flow, so the worker needs no store and the flow stores exactly the bytes the worker encoded."""

    data: bytes
    width: int
    height: int

    @classmethod
    def of(cls, img: Image.Image) -> EncodedImage:
        return cls(encode_png(img), img.width, img.height)

    @classmethod
    def read(cls, path: Path) -> EncodedImage:
        """A stored file's bytes as they are (no decoding and encoding again)."""
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            return cls(data, im.width, im.height)

    def decode(self) -> Image.Image:
        """RGB, fully loaded (as :func:`open_rgb` opens a stored file)."""
        with Image.open(io.BytesIO(self.data)) as im:
            return im.convert("RGB")


def put_image(root: Path, img: Image.Image) -> StoredImage:
    """Store an RGB image (already normalised) and return its content address."""
    return put_encoded(root, EncodedImage.of(img))


def put_encoded(root: Path, image: EncodedImage) -> StoredImage:
    """Store an image's encoded bytes (from :meth:`EncodedImage.of`) and return its content address."""
    image_id = hashlib.sha256(image.data).hexdigest()
    path = object_path(root, image_id)
    created = not path.exists()
    if created:
        atomic_write(path, image.data)
    return StoredImage(image_id, object_relpath(image_id), image.width, image.height, created)


def read_file(path: Path) -> bytes:
    """Read a candidate file, turning filesystem problems into one-line rejections."""
    if not path.exists():
        raise ImageRejected("no such file")
    if path.is_dir():
        raise ImageRejected("is a folder, not a file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise ImageRejected(f"cannot read ({e.strerror})") from None


def ingest_file(root: Path, path: Path, settings: StoreSettings) -> StoredImage:
    """Validate, normalise and store one file; raises :class:`ImageRejected` with the reason."""
    return put_image(root, normalise(read_file(path), settings, name=str(path)))


def remove_if_unreferenced(root: Path, stored: StoredImage) -> None:
    """Undo a fresh store write whose catalog row could not be written (nothing half-written)."""
    if stored.created:
        object_path(root, stored.image_id).unlink(missing_ok=True)


def load_rgb(path: str | Path, store_settings: StoreSettings | None = None) -> np.ndarray:
    """Decode a file as the store would (EXIF orientation, 8-bit RGB, alpha flattened)."""
    return decode_rgb(read_file(Path(path)), store_settings, name=str(path))


def decode_rgb(data: bytes, store_settings: StoreSettings | None = None, name: str = "<bytes>") -> np.ndarray:
    """Decode a file's bytes as :func:`load_rgb` decodes the file (images sent to a cluster worker)."""
    settings = store_settings or StoreSettings(max_side=16384, min_side=16)
    return np.asarray(normalise(data, settings, name=name))


def open_rgb(path: Path) -> Image.Image:
    """An image file as RGB, fully loaded and the file closed (stored images, exports, evaluation outputs)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def load_image(root: Path, image_id: str) -> Image.Image:
    """Open a stored image as RGB (fully loaded, file closed)."""
    return open_rgb(object_path(root, image_id))


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".mpo"})


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) to the image files inside them."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out
