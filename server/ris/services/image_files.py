"""Reading stored images back: RGB arrays for the engine, scaled renditions for the browser.

Everything is read through Django's default storage by the image's key, never by a local path, so a
worker on another machine reads the same bytes from a shared volume or S3-compatible storage.

Decoding for the engine (``image_load_rgb``, by ``workers.engine.data.imaging.decode_rgb``, the decoder the
benchmark's data sets use too) applies the EXIF orientation and converts every accepted
mode to ``H x W x 3`` uint8 RGB: CMYK and palette through Pillow, 16-bit and 32-bit grey scaled into
0-255 (a plain ``convert("RGB")`` would clip them white), images with transparency composited on white,
animated images as their first frame.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image as PILImage
from PIL import ImageOps

from server.ris.errors import InvalidInput, StoredFileMissing
from server.ris.models import Image
from server.ris.services.images import EXIF_ORIENTATION_TAG
from workers.engine.data.imaging import ALPHA_MODES, decode_rgb, pil_to_rgb_array

BROWSER_FORMATS = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}
RENDITION_MIN_SIDE = 16
RENDITION_JPEG_QUALITY = 88
_ALPHA_MODES = ALPHA_MODES


@dataclass(frozen=True)
class Rendition:
    """A stored file to send to the browser: its storage key, MIME type and a strong ETag."""

    key: str
    content_type: str
    etag: str


def image_read_bytes(image: Image) -> bytes:
    """The stored bytes of ``image``, read through the default storage by key.

    Raises ``StoredFileMissing`` (naming the image and its key) when storage no longer holds them.
    """
    try:
        with default_storage.open(image.storage_key, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise StoredFileMissing(
            f"The stored file of image {image.original_name!r} (key {image.storage_key}) is missing from "
            "storage; restore it (is the media volume mounted on this machine?) or upload the image again."
        ) from None


def image_open(image: Image) -> PILImage.Image:
    """A Pillow image of the stored file (lazy: only the header is read until pixels are needed)."""
    return PILImage.open(io.BytesIO(image_read_bytes(image)))


def image_load_rgb(image: Image) -> np.ndarray:
    """Decode ``image`` for the engine: ``H x W x 3`` uint8 RGB, EXIF orientation applied.

    ``H`` and ``W`` equal ``image.height`` and ``image.width``.
    """
    return decode_rgb(image_read_bytes(image), exif=True)


def image_rendition(*, image: Image, max_side: int | None = None) -> Rendition:
    """A browser-ready file of ``image`` whose longest side is at most ``max_side`` (None: full size).

    The original is sent as it is when the browser can show it and it needs no rotation or scaling;
    otherwise a JPEG (PNG where there is transparency) is made once and kept in storage under
    ``renditions/<aa>/<sha256>-<side>.<ext>``.
    """
    if max_side is not None and max_side < RENDITION_MIN_SIDE:
        raise InvalidInput(f"max_side must be at least {RENDITION_MIN_SIDE}; got {max_side}.")
    longest = max(image.width, image.height)
    target = None if max_side is None or max_side >= longest else max_side
    side_label = str(target) if target is not None else "full"
    if target is None and image.format in BROWSER_FORMATS and not _needs_rotation(image):
        return Rendition(image.storage_key, BROWSER_FORMATS[image.format], f'"{image.sha256}"')
    for extension, content_type in (("jpg", "image/jpeg"), ("png", "image/png")):
        key = f"renditions/{image.sha256[:2]}/{image.sha256}-{side_label}.{extension}"
        if default_storage.exists(key):
            return Rendition(key, content_type, f'"{image.sha256}-{side_label}"')
    with image_open(image) as picture:
        picture.seek(0)
        upright = ImageOps.exif_transpose(picture)
        has_alpha = upright.mode in _ALPHA_MODES or "transparency" in upright.info
        if upright.mode.startswith("I") or upright.mode == "F":
            upright = PILImage.fromarray(pil_to_rgb_array(upright))
        upright = upright.convert("RGBA" if has_alpha else "RGB")
        if target is not None:
            upright.thumbnail((target, target), PILImage.Resampling.LANCZOS)
        buffer = io.BytesIO()
        if has_alpha:
            upright.save(buffer, format="PNG", optimize=True)
            extension, content_type = "png", "image/png"
        else:
            upright.save(buffer, format="JPEG", quality=RENDITION_JPEG_QUALITY, optimize=True)
            extension, content_type = "jpg", "image/jpeg"
    key = f"renditions/{image.sha256[:2]}/{image.sha256}-{side_label}.{extension}"
    if not default_storage.exists(key):
        saved = default_storage.save(key, ContentFile(buffer.getvalue()))
        if saved != key:
            default_storage.delete(saved)
    return Rendition(key, content_type, f'"{image.sha256}-{side_label}"')


def _needs_rotation(image: Image) -> bool:
    with image_open(image) as picture:
        try:
            return int(picture.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1) != 1
        except Exception:  # an unreadable EXIF block: treat as upright, as the upload did
            return False
