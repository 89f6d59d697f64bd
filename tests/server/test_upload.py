"""image_upload: validation of each file and archive member, content addressing, duplicates."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from server.ris.models import Image
from server.ris.services import image_upload

pytestmark = pytest.mark.django_db


def upload(project, user, *files):
    return image_upload(project=project, files=list(files), uploaded_by=user)


def named(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data)


def jpeg_bytes(width=64, height=48, mode="RGB", exif_orientation=None) -> bytes:
    buffer = io.BytesIO()
    picture = PILImage.new(mode, (width, height), (30, 60, 90) if mode == "RGB" else (10, 20, 30, 40))
    kwargs = {}
    if exif_orientation is not None:
        exif = PILImage.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    picture.save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` with a tiny (and wrong) data stream."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


def zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            archive.writestr(info, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def test_png_is_stored_content_addressed(project, user, png_bytes):
    data = png_bytes(40, 30)
    stored, rejected = upload(project, user, named("a.png", data))
    assert rejected == []
    image = stored[0].image
    assert (image.width, image.height, image.format) == (40, 30, "PNG")
    assert image.storage_key == f"images/{image.sha256[:2]}/{image.sha256}.png"
    with default_storage.open(image.storage_key, "rb") as handle:
        assert handle.read() == data
    assert image.original_name == "a.png" and image.size_bytes == len(data)


def test_same_bytes_twice_give_the_same_image(project, user, png_bytes):
    data = png_bytes(40, 30)
    first, _ = upload(project, user, named("a.png", data))
    second, rejected = upload(project, user, named("renamed.png", data))
    assert rejected == []
    assert second[0].duplicate is True and first[0].duplicate is False
    assert second[0].image.pk == first[0].image.pk
    assert Image.objects.filter(project=project).count() == 1


def test_non_image_is_rejected_with_its_name(project, user):
    stored, rejected = upload(project, user, named("notes.txt", b"hello, I am not a picture"))
    assert stored == []
    assert rejected[0].name == "notes.txt"
    assert "notes.txt is not an image" in rejected[0].error


def test_empty_file_is_rejected(project, user):
    _, rejected = upload(project, user, named("empty.png", b""))
    assert "empty" in rejected[0].error


def test_truncated_jpeg_is_rejected_and_earlier_images_stay(project, user, png_bytes):
    kept, _ = upload(project, user, named("good.png", png_bytes(20, 20)))
    data = jpeg_bytes(256, 256)
    stored, rejected = upload(project, user, named("cut.jpg", data[: len(data) // 2]))
    assert stored == []
    assert "cut.jpg is truncated or corrupt" in rejected[0].error
    assert list(Image.objects.filter(project=project)) == [kept[0].image]
    assert default_storage.exists(kept[0].image.storage_key)


def test_huge_dimension_png_is_rejected_from_its_header(project, user):
    _, rejected = upload(project, user, named("wide.png", png_header_only(60_000, 10)))
    assert "60000x10" in rejected[0].error and "longest side" in rejected[0].error


def test_pixel_cap_stops_a_decompression_bomb(project, user, settings):
    settings.RIS_MAX_IMAGE_PIXELS = 1_000_000
    _, rejected = upload(project, user, named("bomb.png", png_header_only(5000, 5000)))
    assert "pixels" in rejected[0].error and "limit" in rejected[0].error


def test_pillow_bomb_guard_gives_a_message(project, user, settings):
    settings.RIS_MAX_IMAGE_SIDE = 10**6
    settings.RIS_MAX_IMAGE_PIXELS = 10**12
    _, rejected = upload(project, user, named("giant.png", png_header_only(19_000, 19_000)))
    assert "too many pixels" in rejected[0].error


def test_upload_size_cap(project, user, settings, png_bytes):
    settings.RIS_MAX_UPLOAD_BYTES = 100
    _, rejected = upload(project, user, named("big.png", png_bytes(200, 200) + b"\0" * 200))
    assert "upload limit" in rejected[0].error


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "P", "LA", "I;16", "L"])
def test_unusual_modes_are_accepted(project, user, mode):
    buffer = io.BytesIO()
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    PILImage.new(mode, (17, 13)).save(buffer, format=fmt)
    stored, rejected = upload(project, user, named(f"m.{fmt.lower()}", buffer.getvalue()))
    assert rejected == [] and (stored[0].image.width, stored[0].image.height) == (17, 13)


def test_exif_rotation_swaps_width_and_height(project, user):
    stored, _ = upload(project, user, named("rotated.jpg", jpeg_bytes(64, 48, exif_orientation=6)))
    assert (stored[0].image.width, stored[0].image.height) == (48, 64)


def test_animated_gif_is_accepted(project, user):
    frames = [PILImage.new("P", (20, 10), i) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    stored, rejected = upload(project, user, named("anim.gif", buffer.getvalue()))
    assert rejected == [] and stored[0].image.format == "GIF"


def test_zip_members_are_checked_one_by_one(project, user, png_bytes):
    archive = zip_bytes(
        {
            "photos/one.png": png_bytes(10, 10, color=(1, 2, 3)),
            "../evil.png": png_bytes(11, 11),
            "/etc/abs.png": png_bytes(12, 12),
            "photos/readme.txt": b"text",
            "__MACOSX/._one.png": b"junk",
        },
        symlinks={"link.png": "/etc/passwd"},
    )
    stored, rejected = upload(project, user, named("batch.zip", archive))
    assert [item.image.original_name for item in stored] == ["one.png"]
    errors = {item.name: item.error for item in rejected}
    assert "'..'" in errors["batch.zip/../evil.png"]
    assert "absolute path" in errors["batch.zip//etc/abs.png"]
    assert "not an image" in errors["batch.zip/photos/readme.txt"]
    assert "symbolic link" in errors["batch.zip/link.png"]
    assert len(rejected) == 4


def test_zip_with_too_many_members_is_refused_whole(project, user, settings, png_bytes):
    settings.RIS_MAX_ZIP_MEMBERS = 2
    archive = zip_bytes({f"{i}.png": png_bytes(5 + i, 5) for i in range(3)})
    stored, rejected = upload(project, user, named("many.zip", archive))
    assert stored == [] and "at most 2" in rejected[0].error


def test_zip_bomb_is_refused_by_declared_size(project, user, settings):
    settings.RIS_MAX_ZIP_UNCOMPRESSED_BYTES = 1_000_000
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.png", b"\0" * 5_000_000)
    stored, rejected = upload(project, user, named("bomb.zip", buffer.getvalue()))
    assert len(buffer.getvalue()) < 50_000
    assert stored == [] and "zip bomb" in rejected[0].error


def test_not_a_zip_named_zip(project, user):
    _, rejected = upload(project, user, named("fake.zip", b"PK\x03\x04 broken"))
    assert "not a readable zip archive" in rejected[0].error


def test_one_bad_file_does_not_fail_the_others(project, user, png_bytes):
    stored, rejected = upload(
        project,
        user,
        named("a.png", png_bytes(10, 10)),
        named("b.txt", b"nope"),
        named("c.png", png_bytes(12, 10)),
    )
    assert sorted(item.image.original_name for item in stored) == ["a.png", "c.png"]
    assert [item.name for item in rejected] == ["b.txt"]


def test_two_projects_share_one_stored_object(project, user, png_bytes):
    from server.ris.services import project_create

    other = project_create(name="Other", created_by=user)
    data = png_bytes(15, 15)
    first, _ = upload(project, user, named("x.png", data))
    second, _ = upload(other, user, named("x.png", data))
    assert first[0].image.pk != second[0].image.pk
    assert first[0].image.storage_key == second[0].image.storage_key
    assert default_storage.exists(first[0].image.storage_key)
