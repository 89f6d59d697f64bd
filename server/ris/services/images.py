"""Upload of images and zip archives of images into a project.

Each file (and each member of an archive) is checked on its own and either stored or rejected with a
message naming it and the problem; one bad file never fails the others, and nothing stored before is
ever changed or removed. Checks, in order:

- size: at most ``RIS_MAX_UPLOAD_BYTES`` per file (and per archive member);
- content hash: the same bytes already in the project give the existing Image (``duplicate``);
- Pillow opens it, restricted to ``ALLOWED_FORMATS`` (never a format that runs an external program);
- dimensions from the header, before any pixel is decoded: longest side at most ``RIS_MAX_IMAGE_SIDE``,
  pixels at most ``RIS_MAX_IMAGE_PIXELS`` (decompression bombs stop here);
- a full decode of the first frame, so truncated and corrupt files are refused now, not in the worker.

CMYK, 16-bit, palette, alpha and animated images are stored as they are; ``image_files.image_load_rgb``
converts when decoding for the engine. ``width``/``height`` honour the EXIF orientation.

Bytes live in Django's default storage under ``images/<aa>/<sha256>.<ext>``: content-addressed, so two
projects uploading one photo share one object, and a key is never overwritten with other bytes.

Archives (``.zip``): members whose path is absolute or climbs out with ``..``, symlinks and encrypted
members are refused one by one; an archive with more than ``RIS_MAX_ZIP_MEMBERS`` members or more than
``RIS_MAX_ZIP_UNCOMPRESSED_BYTES`` declared in total is refused whole (a zip bomb), and each member is
read with a byte cap whatever its header declares. Archives inside archives are not unpacked.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import stat
import struct
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from server.ris.models import Image, Project
from server.ris.services.dispatch import PREPARE_IMAGE, task_send

logger = logging.getLogger(__name__)

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG also opens MPO
EXTENSION_BY_FORMAT = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
}
EXIF_ORIENTATION_TAG = 0x0112
ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
NAME_MAX = 255
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


class UploadFile(Protocol):
    """What ``image_upload`` reads: Django's ``UploadedFile`` and ``SimpleUploadedFile`` qualify."""

    name: str | None

    def read(self, size: int = -1) -> bytes: ...


@dataclass(frozen=True)
class UploadedImage:
    image: Image
    duplicate: bool


@dataclass(frozen=True)
class RejectedFile:
    name: str
    error: str


@dataclass(frozen=True)
class ImageFacts:
    """What the header and one decode of the first frame tell. Width and height after EXIF orientation."""

    format: str
    width: int
    height: int


class ImageRejected(Exception):
    """A file is not acceptable; the message is shown to the user next to the file's name."""


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def image_upload(
    *, project: Project, files: Iterable[UploadFile], uploaded_by: AbstractBaseUser | None
) -> tuple[list[UploadedImage], list[RejectedFile]]:
    """Store every acceptable image among ``files`` (zip archives unpacked) in ``project``.

    Returns the stored images (existing ones flagged ``duplicate``) and one ``RejectedFile`` per file or
    archive member refused, each with a message naming the problem.
    """
    stored: list[UploadedImage] = []
    rejected: list[RejectedFile] = []
    max_bytes = _setting("RIS_MAX_UPLOAD_BYTES", 50 * 1024 * 1024)
    for upload in files:
        name = _clean_name(upload.name or "upload")
        size = getattr(upload, "size", None)
        if size is not None and size > max_bytes:
            rejected.append(RejectedFile(name, f"{name} {_too_big_message(size, max_bytes)}"))
            continue
        data = upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            rejected.append(RejectedFile(name, f"{name} {_too_big_message(len(data), max_bytes)}"))
            continue
        if data.startswith(_ZIP_MAGIC) or name.lower().endswith(".zip"):
            for member_name, member_data, problem in _zip_members(name, data):
                if problem is not None or member_data is None:
                    rejected.append(RejectedFile(member_name, problem or "could not be read"))
                    continue
                _store_one(project, member_name, member_data, uploaded_by, stored, rejected)
        else:
            _store_one(project, name, data, uploaded_by, stored, rejected)
    return stored, rejected


def image_store_bytes(
    *, project: Project, name: str, data: bytes, uploaded_by: AbstractBaseUser | None
) -> UploadedImage:
    """Validate and store one image's bytes; raises ``ImageRejected`` with the reason."""
    sha256 = hashlib.sha256(data).hexdigest()
    existing = Image.objects.filter(project=project, sha256=sha256).first()
    if existing is not None:
        return UploadedImage(existing, duplicate=True)
    if not data:
        raise ImageRejected("is empty (0 bytes)")
    facts = image_inspect(data)
    key = _storage_key(sha256, facts.format)
    try:
        _storage_put(key, data)
    except OSError as error:
        logger.exception("Storage refused %s", key)
        raise ImageRejected(f"could not be saved to storage ({error}); try again later") from None
    try:
        with transaction.atomic():
            image = Image.objects.create(
                project=project,
                sha256=sha256,
                storage_key=key,
                original_name=_display_name(name),
                format=facts.format,
                width=facts.width,
                height=facts.height,
                size_bytes=len(data),
                uploaded_by=uploaded_by,
            )
    except IntegrityError:  # the same bytes arrived in a concurrent request
        return UploadedImage(Image.objects.get(project=project, sha256=sha256), duplicate=True)
    if getattr(settings, "RIS_PREPARE_ON_UPLOAD", True):
        transaction.on_commit(partial(image_prepare_dispatch, image_id=image.pk))
    return UploadedImage(image, duplicate=False)


def image_prepare_dispatch(*, image_id: int) -> str | None:
    """Ask a background-lane worker to do this image's image-level engine work ahead of time.

    One message per image: preparing a large upload is as many small units of background work, so an
    interactive job on a machine shared with the background worker waits at most for one of them.
    """
    return task_send(PREPARE_IMAGE, args=[image_id])


def image_inspect(data: bytes) -> ImageFacts:
    """Check that ``data`` is an acceptable image and return its format and displayed size.

    Raises ``ImageRejected`` (message without the file name) for a non-image, a format not allowed,
    dimensions over the caps (checked from the header before decoding), or a truncated/corrupt file.
    """
    max_side = _setting("RIS_MAX_IMAGE_SIDE", 20_000)
    max_pixels = _setting("RIS_MAX_IMAGE_PIXELS", 50_000_000)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            picture = PILImage.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise ImageRejected(
            f"has too many pixels to be decoded safely (the limit is {max_pixels:,} pixels)"
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected(
            "is not an image this service reads (accepted: JPEG, PNG, GIF, WebP, BMP, TIFF)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise ImageRejected(f"is corrupt: its header cannot be read ({error})") from None
    with picture:
        width, height = picture.size
        if width < 1 or height < 1:
            raise ImageRejected(f"has no pixels ({width}x{height})")
        if max(width, height) > max_side:
            raise ImageRejected(
                f"is {width}x{height} pixels; the longest side may be at most {max_side:,} pixels"
            )
        if width * height > max_pixels:
            raise ImageRejected(
                f"is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,} pixels"
            )
        image_format = str(picture.format)
        try:
            # Decode before reading EXIF: a PNG's getexif() loads the pixels itself and, when that fails,
            # leaves the image marked loaded, so a later load() would pass a corrupt file.
            picture.load()  # decodes the first frame only: animated images keep their first frame
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as error:
            raise ImageRejected(f"is truncated or corrupt and cannot be decoded ({error})") from None
        try:
            orientation = int(picture.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
        except Exception:  # a broken EXIF block must not hide the picture itself
            orientation = 1
    if orientation in ROTATED_ORIENTATIONS:
        width, height = height, width
    return ImageFacts(format=image_format, width=width, height=height)


def _store_one(
    project: Project,
    name: str,
    data: bytes,
    uploaded_by: AbstractBaseUser | None,
    stored: list[UploadedImage],
    rejected: list[RejectedFile],
) -> None:
    try:
        stored.append(image_store_bytes(project=project, name=name, data=data, uploaded_by=uploaded_by))
    except ImageRejected as reason:
        rejected.append(RejectedFile(name, f"{name} {reason}"))


def _zip_members(archive_name: str, data: bytes) -> Iterator[tuple[str, bytes | None, str | None]]:
    """Yield ``(display name, bytes or None, problem or None)`` for each file member of a zip archive."""
    max_members = _setting("RIS_MAX_ZIP_MEMBERS", 2000)
    max_total = _setting("RIS_MAX_ZIP_UNCOMPRESSED_BYTES", 1024 * 1024 * 1024)
    max_bytes = _setting("RIS_MAX_UPLOAD_BYTES", 50 * 1024 * 1024)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as error:
        yield archive_name, None, f"{archive_name} is not a readable zip archive ({error})"
        return
    with archive:
        files = [info for info in infos if not info.is_dir()]
        if len(files) > max_members:
            yield (
                archive_name,
                None,
                f"{archive_name} holds {len(files):,} files; an archive may hold at most {max_members:,}",
            )
            return
        declared = sum(info.file_size for info in files)
        if declared > max_total:
            yield (
                archive_name,
                None,
                f"{archive_name} unpacks to {declared:,} bytes; the limit is {max_total:,} bytes "
                "(a zip bomb is refused whole)",
            )
            return
        if not files:
            yield archive_name, None, f"{archive_name} is an empty archive"
            return
        usable = [info for info in files if not _is_noise(info.filename)]
        if not usable:
            yield (
                archive_name,
                None,
                f"{archive_name} holds only files that are skipped ({len(files):,} in __MACOSX/ or hidden "
                "dot-files); put the images at the archive's top level or in ordinary folders",
            )
            return
        for info in usable:
            display = f"{archive_name}/{info.filename}"
            problem = _member_problem(info, max_bytes)
            if problem is not None:
                yield display, None, f"{display} {problem}"
                continue
            try:
                with archive.open(info) as member:
                    member_data = member.read(max_bytes + 1)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as error:
                yield display, None, f"{display} cannot be unpacked ({error})"
                continue
            if len(member_data) > max_bytes:
                yield display, None, f"{display} {_too_big_message(len(member_data), max_bytes)}"
                continue
            if member_data.startswith(_ZIP_MAGIC):
                yield display, None, f"{display} is an archive inside an archive; these are not unpacked"
                continue
            yield display, member_data, None


def _member_problem(info: zipfile.ZipInfo, max_bytes: int) -> str | None:
    name = info.filename
    if name.startswith(("/", "\\")) or _DRIVE_LETTER.match(name):
        return "has an absolute path; archive members must have relative paths"
    if ".." in re.split(r"[\\/]", name):
        return "has a path with '..' that points outside the archive; it was not unpacked"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link; links in archives are not followed"
    if info.flag_bits & 0x1:
        return "is encrypted; encrypted members are not supported"
    if info.file_size > max_bytes:
        return _too_big_message(info.file_size, max_bytes)
    return None


def _is_noise(member_name: str) -> bool:
    """Folders and files that archivers add and nobody uploads on purpose (``__MACOSX/``, dot files)."""
    parts = [part for part in re.split(r"[\\/]", member_name) if part]
    return not parts or parts[0] == "__MACOSX" or parts[-1].startswith(".")


def _too_big_message(size: int, limit: int) -> str:
    return f"is {size:,} bytes; the upload limit is {limit:,} bytes per file"


def _clean_name(name: str) -> str:
    cleaned = "".join(ch for ch in name if ch.isprintable()).strip()
    return (cleaned or "upload")[:NAME_MAX]


def _display_name(name: str) -> str:
    """The name an Image keeps: the last path part (``a.zip/dir/b.jpg`` -> ``b.jpg``)."""
    parts = [part for part in re.split(r"[\\/]", name) if part]
    return (parts[-1] if parts else name)[:NAME_MAX]


def _storage_key(sha256: str, image_format: str) -> str:
    return f"images/{sha256[:2]}/{sha256}.{EXTENSION_BY_FORMAT.get(image_format, 'bin')}"


def _storage_put(key: str, data: bytes) -> None:
    """Write ``data`` under ``key`` unless that key exists (same key, same bytes: content-addressed)."""
    if default_storage.exists(key):
        return
    saved = default_storage.save(key, ContentFile(data))
    if saved != key:  # another process wrote the same key in between; keep one copy
        default_storage.delete(saved)
