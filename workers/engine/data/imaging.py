"""One image decoder for uploads and data sets: bytes -> ``H x W x 3`` uint8 RGB. Torch-free (Pillow, NumPy).

The web's upload path (``server.ris.services.image_files.image_load_rgb``) and the REFER reader
(``workers.engine.data.refer.ReferDataset.load_image``) both decode here, so a picture reads the same in the
product and in the benchmark:

- CMYK and palette images through Pillow's own conversion;
- 16-bit and 32-bit grey scaled into 0-255 (``I;16`` by 1/257; a plain ``convert("RGB")`` clips them white);
- images with transparency composited on white;
- animated images as their first frame;
- EXIF orientation applied when ``exif=True`` (uploads); data sets decide per image
  (:func:`decode_rgb` returns the size both ways so the caller can match its annotations).
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

__all__ = ["ALPHA_MODES", "ImageDecodeError", "decode_rgb", "exif_orientation", "pil_to_rgb_array"]

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
EXIF_ORIENTATION_TAG = 0x0112


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can decode (message says why)."""


def pil_to_rgb_array(picture: PILImage.Image) -> np.ndarray:
    """Convert any Pillow mode to an ``H x W x 3`` uint8 RGB array (see the module docstring)."""
    mode = picture.mode
    if mode.startswith("I") or mode == "F":
        values = np.asarray(picture).astype(np.float64)
        top = float(values.max()) if values.size else 0.0
        bottom = float(values.min()) if values.size else 0.0
        if mode.startswith("I;16") or (mode == "I" and bottom >= 0 and 255 < top <= 65535):
            values = values / 257.0
        elif mode == "F" or bottom < 0 or top > 65535:
            values = (values - bottom) / (top - bottom) * 255.0 if top > bottom else np.zeros_like(values)
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode in ALPHA_MODES or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        white = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(PILImage.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(picture.convert("RGB"), dtype=np.uint8).copy()


def exif_orientation(picture: PILImage.Image) -> int:
    """The EXIF orientation (1-8) of ``picture``; 1 when absent or unreadable."""
    try:
        value = int(picture.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # a broken EXIF block must not hide the picture itself
        return 1
    return value if 1 <= value <= 8 else 1


def decode_rgb(data: bytes, *, exif: bool = True) -> np.ndarray:
    """Decode image bytes to ``H x W x 3`` uint8 RGB (first frame; EXIF orientation applied when ``exif``).

    Raises:
        ImageDecodeError: the bytes are not a readable image, or are truncated / corrupt.
    """
    try:
        with PILImage.open(io.BytesIO(data)) as picture:
            picture.seek(0)
            upright = ImageOps.exif_transpose(picture) if exif and exif_orientation(picture) != 1 else picture
            return pil_to_rgb_array(upright)
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as error:
        raise ImageDecodeError(f"truncated or corrupt ({error})") from None
