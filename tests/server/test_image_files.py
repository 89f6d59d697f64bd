"""image_load_rgb (decoding for the engine through storage) and image_rendition (scaled files for pages)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from server.ris.services import image_load_rgb, image_rendition, image_upload

pytestmark = pytest.mark.django_db


def stored(project, user, picture: PILImage.Image, fmt: str = "PNG", **save_kwargs):
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **save_kwargs)
    images, rejected = image_upload(
        project=project, files=[SimpleUploadedFile(f"x.{fmt.lower()}", buffer.getvalue())], uploaded_by=user
    )
    assert rejected == []
    return images[0].image


def test_rgb_png_round_trips(project, user):
    pixels = np.random.default_rng(0).integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    image = stored(project, user, PILImage.fromarray(pixels))
    rgb = image_load_rgb(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (9, 13, 3)
    np.testing.assert_array_equal(rgb, pixels)


def test_exif_orientation_is_applied(project, user):
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0)  # red top-left before rotation
    exif = PILImage.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image = stored(project, user, PILImage.fromarray(pixels), "PNG", exif=exif.tobytes())
    rgb = image_load_rgb(image)
    assert rgb.shape == (6, 4, 3) == (image.height, image.width, 3)
    assert tuple(rgb[0, -1]) == (255, 0, 0)  # top-left moved to top-right


def test_sixteen_bit_grey_is_scaled_not_clipped(project, user):
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = stored(project, user, PILImage.fromarray(values))
    rgb = image_load_rgb(image)
    assert rgb.shape == (1, 3, 3)
    assert list(rgb[0, :, 0]) == [0, 128, 255]


def test_alpha_is_composited_on_white(project, user):
    image = stored(project, user, PILImage.new("RGBA", (3, 2), (0, 0, 0, 0)))
    assert (image_load_rgb(image) == 255).all()


def test_cmyk_and_palette_become_rgb(project, user):
    cmyk = stored(project, user, PILImage.new("CMYK", (5, 4), (0, 255, 255, 0)), "JPEG")
    red = image_load_rgb(cmyk)
    assert red.shape == (4, 5, 3) and red[..., 0].min() > 200 and red[..., 1].max() < 60
    palette = PILImage.new("P", (5, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    rgb = image_load_rgb(stored(project, user, palette))
    assert tuple(rgb[0, 0]) == (10, 200, 30)


def test_animated_gif_gives_its_first_frame(project, user):
    frames = []
    for value in (1, 2):
        frame = PILImage.new("P", (4, 4), value)
        frame.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
        frames.append(frame)
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=40)
    image, _ = image_upload(
        project=project, files=[SimpleUploadedFile("a.gif", buffer.getvalue())], uploaded_by=user
    )
    assert tuple(image_load_rgb(image[0].image)[0, 0]) == (255, 0, 0)


def test_rendition_scales_and_is_kept(project, user):
    image = stored(project, user, PILImage.new("RGB", (400, 200), (0, 90, 200)))
    small = image_rendition(image=image, max_side=100)
    assert small.key.startswith("renditions/") and small.content_type == "image/jpeg"
    with default_storage.open(small.key, "rb") as handle:
        assert PILImage.open(handle).size == (100, 50)
    assert image_rendition(image=image, max_side=100) == small
    original = image_rendition(image=image, max_side=None)
    assert original.key == image.storage_key and original.content_type == "image/png"


def test_rendition_of_tiff_is_browser_ready(project, user):
    image = stored(project, user, PILImage.new("RGB", (30, 20), (0, 90, 200)), "TIFF")
    rendition = image_rendition(image=image)
    assert rendition.content_type == "image/jpeg" and rendition.key != image.storage_key
