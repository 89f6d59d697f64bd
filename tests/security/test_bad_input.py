"""Bad input through the HTTP API, each refused with a clear 4xx message and nothing stored before lost,
and unusual-but-valid input accepted and decoded right; then hard expressions through the real engine's
text path (spaCy parse, CLIP tokenizer with its 77-token context, CLIP text encoder).

The services' own tests (tests/server/test_upload.py, test_image_files.py, test_jobs.py,
test_reviews_and_selectors.py) check each rule at the service level; these go through the API the way a
client meets them, and add what those leave out: a corrupt stream behind a valid header, a zip whose
header lies about its size, invisible-only expressions, and the engine's handling of scripts, emoji and
10 000 characters.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image as PILImage

from server.ris.models import Expression, Image, Review
from server.ris.services import image_load_rgb, job_claim, job_succeed
from tests.server.factories import candidate_dicts, expression_make, image_make, job_of
from tests.server.test_upload import jpeg_bytes, png_header_only, zip_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def kept(project, user) -> Image:
    """An image stored before the bad uploads; it must come through untouched."""
    return image_make(project, user, name="kept.png")


def _post_files(api_client, project, *files: tuple[str, bytes]):
    uploads = [SimpleUploadedFile(name, data) for name, data in files]
    return api_client.post(f"/api/projects/{project.pk}/images/", {"files": uploads}, format="multipart")


def _png(mode: str = "RGB", size: tuple[int, int] = (40, 30), **save) -> bytes:
    buffer = io.BytesIO()
    PILImage.new(mode, size).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _corrupt_png() -> bytes:
    """A valid PNG signature and header whose image data is not a zlib stream (CRCs made right)."""
    data = bytearray(_png(size=(64, 64)))
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8 : start - 4])[0]
    data[start : start + length] = bytes((i * 37) % 251 for i in range(length))
    crc = zlib.crc32(bytes(data[start - 4 : start + length]))
    data[start + length : start + length + 4] = struct.pack(">I", crc)
    return bytes(data)


def _zip_with_lying_header(real_size: int, declared: int) -> bytes:
    """A deflated member of ``real_size`` zero bytes whose headers claim ``declared`` bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.png", b"\0" * real_size)
    raw = bytearray(buffer.getvalue())
    local = raw.index(b"PK\x03\x04")
    raw[local + 22 : local + 26] = struct.pack("<I", declared)
    central = raw.index(b"PK\x01\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", declared)
    return bytes(raw)


BAD_FILES = {
    "not-an-image": ("notes.png", b"just some text, not pixels", "is not an image"),
    "empty": ("empty.jpg", b"", "is empty"),
    "truncated": ("cut.jpg", jpeg_bytes(64, 48)[:300], "corrupt"),
    "corrupt-stream": ("garbled.png", _corrupt_png(), "truncated or corrupt"),
    "huge-dimensions": ("wide.png", png_header_only(60_000, 10), "longest side"),
    "decompression-bomb": ("bomb.png", png_header_only(19_000, 19_000), "pixels"),
    "zip-slip": ("slip.zip", zip_bytes({"../../etc/evil.png": _png()}), "outside the archive"),
    "zip-absolute": ("abs.zip", zip_bytes({"/tmp/evil.png": _png()}), "absolute path"),
    "zip-bomb": ("bomb.zip", _zip_with_lying_header(0, 0), "zip bomb"),
    "zip-lying-header": ("liar.zip", _zip_with_lying_header(3_000_000, 1_000), "zeros.png"),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_bad_file_is_refused_with_its_name_and_nothing_is_lost(api_client, project, kept, settings, case):
    name, data, reason = BAD_FILES[case]
    if case == "zip-bomb":  # 5 MB of zeros declared (and real): over a 1 MB cap on unpacked bytes
        settings.RIS_MAX_ZIP_UNCOMPRESSED_BYTES = 1_000_000
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("zeros.png", b"\0" * 5_000_000)
        data = buffer.getvalue()
        assert len(data) < 50_000
    if case == "decompression-bomb":
        settings.RIS_MAX_IMAGE_PIXELS = 100_000_000  # the header's 361 M pixels exceed it
    response = _post_files(api_client, project, (name, data))
    assert response.status_code == 400, response.content
    body = response.json()
    assert name in body["error"] and reason in body["error"], body["error"]
    assert body["images"] == [] and len(body["rejected"]) == 1
    assert list(Image.objects.all()) == [kept]
    assert default_storage.exists(kept.storage_key)
    assert image_load_rgb(kept).shape == (kept.height, kept.width, 3)


def test_a_batch_with_bad_files_keeps_the_good_ones(api_client, project, kept):
    response = _post_files(
        api_client,
        project,
        ("good.png", _png(size=(21, 13))),
        ("cut.jpg", jpeg_bytes()[:200]),
        ("n.txt", b"x"),
    )
    assert response.status_code == 201
    body = response.json()
    assert [image["original_name"] for image in body["images"]] == ["good.png"]
    assert sorted(item["name"] for item in body["rejected"]) == ["cut.jpg", "n.txt"]
    assert Image.objects.count() == 2


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("CMYK", (30, 20), (0, 255, 255, 0)).save(buffer, format="JPEG")  # red in CMYK
    return buffer.getvalue()


def _sixteen_bit_png() -> bytes:
    values = np.full((20, 30), 40_000, dtype=np.uint16)  # over 255: a plain convert would clip it white
    buffer = io.BytesIO()
    PILImage.fromarray(values).save(buffer, format="PNG")
    return buffer.getvalue()


def _palette_png_with_transparency() -> bytes:
    picture = PILImage.new("P", (30, 20), 1)
    picture.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def _animated_webp() -> bytes:
    frames = [PILImage.new("RGB", (30, 20), color) for color in ((0, 0, 255), (255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], duration=40, lossless=True)
    return buffer.getvalue()


UNUSUAL = {
    # name: (bytes, (width, height) shown, a pixel (row, col) and its RGB after decoding, tolerance)
    "cmyk.jpg": (_cmyk_jpeg, (30, 20), (10, 15), (255, 0, 0), 40),
    "sixteen.png": (_sixteen_bit_png, (30, 20), (10, 15), (156, 156, 156), 1),
    "palette.png": (_palette_png_with_transparency, (30, 20), (10, 15), (0, 0, 255), 0),
    "alpha.png": (lambda: _png("RGBA", (30, 20)), (30, 20), (10, 15), (255, 255, 255), 0),  # clear -> white
    "rotated.jpg": (lambda: jpeg_bytes(64, 48, exif_orientation=6), (48, 64), (5, 5), (30, 60, 90), 12),
    "animated.webp": (_animated_webp, (30, 20), (10, 15), (0, 0, 255), 4),  # the first frame
}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_unusual_images_are_stored_and_decoded_right(api_client, project, name):
    make, (width, height), (row, col), rgb, tolerance = UNUSUAL[name]
    response = _post_files(api_client, project, (name, make()))
    assert response.status_code == 201, response.json()
    shown = response.json()["images"][0]
    assert (shown["width"], shown["height"]) == (width, height)
    image = Image.objects.get(pk=shown["id"])
    pixels = image_load_rgb(image)
    assert pixels.shape == (height, width, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels[row, col].astype(int) - rgb).max() <= tolerance, pixels[row, col]
    rendition = api_client.get(f"/api/images/{image.pk}/file/?max_side=64")
    assert rendition.status_code == 200 and rendition["Content-Type"] in (
        "image/jpeg",
        "image/png",
        "image/webp",
    )
    assert PILImage.open(io.BytesIO(b"".join(rendition.streaming_content))).size == (width, height)


@pytest.fixture
def image(project, user):
    return image_make(project, user)


@pytest.mark.parametrize(
    "text",
    [
        "左边穿红衣服的女人",
        "الرجل على اليسار",
        "बाईं ओर का आदमी",
        "the 🐶 on the left",
        "👩\u200d💻 at the desk",
        "Ünïcödé çafé",
    ],
)
def test_non_latin_and_emoji_expressions_are_kept_as_typed(api_client, image, text):
    response = api_client.post(f"/api/images/{image.pk}/expressions/", {"text": text}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["text"] == text and Expression.objects.get().text == text


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\t\n\r ", "\u00a0\u3000", "\u200b\u200b", "\ufeff", "\x01\x02\x1f"],
    ids=["empty", "spaces", "tabs-newlines", "nbsp-ideographic", "zero-width", "bom", "control"],
)
def test_blank_expressions_are_refused_in_words(api_client, image, text):
    response = api_client.post(f"/api/images/{image.pk}/expressions/", {"text": text}, format="json")
    assert response.status_code == 400, response.json()
    assert "empty" in response.json()["error"]
    assert Expression.objects.count() == 0


def test_long_expressions_stop_at_the_limit_with_a_message(api_client, image):
    url = f"/api/images/{image.pk}/expressions/"
    assert api_client.post(url, {"text": "a" * Expression.MAX_LENGTH}, format="json").status_code == 201
    refused = api_client.post(url, {"text": "word " * 2000}, format="json")
    assert refused.status_code == 400 and "10,000 characters" not in refused.json()["error"]
    assert "the limit is 1,000" in refused.json()["error"]
    assert api_client.post(url, {"text": ["a list"]}, format="json").status_code == 400


@pytest.fixture
def answered(image, user):
    expression = expression_make(image, user)
    job = job_of(expression)
    job_claim(job_id=job.pk, worker="w")
    job_succeed(job_id=job.pk, candidates=candidate_dicts(image.height, image.width, 2))
    return expression


@pytest.mark.parametrize(
    "rle",
    [
        {"size": [30, 40], "counts": 12345},
        {"size": [30, 40]},
        {"size": [-30, 40], "counts": "PPYo1"},
        {"size": [30, 40], "counts": ""},
        {"size": [30, 40], "counts": "0" * 100_000},
        {"size": ["30", "40"], "counts": "PPYo1"},
        {"size": [30, 40], "counts": "\u00ff\u00fe"},
        {"size": [30, 40], "counts": [1, 2, 3]},
        "PPYo1",
    ],
)
def test_malformed_rle_in_a_review_is_refused(api_client, answered, rle):
    response = api_client.post(
        f"/api/expressions/{answered.pk}/reviews/", {"decision": "corrected", "rle": rle}, format="json"
    )
    assert response.status_code == 400, response.json()
    assert response.json()["error"]
    assert Review.objects.count() == 0


# ---------------------------------------------------------------------------- the engine's text path


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    """The real engine on a store with the tiny CLIP, the tiny SAM and spaCy (no Django involved)."""
    from workers.engine.core.settings import EngineSettings
    from workers.engine.runtime import Engine
    from workers.engine.store.fetch import fetch
    from workers.engine.store.manifest import ModelStore
    from workers.engine.store.tiny.writers import make_tiny

    root: Path = tmp_path_factory.mktemp("text-path-models")
    store = ModelStore(root)
    fetch(store, "spacy_en")
    make_tiny(store, ["clip_tiny", "sam_tiny"])
    return Engine(EngineSettings(model_dir=root, cache_dir=None, device="cpu"))


HARD_EXPRESSIONS = [
    "左边穿红衣服的女人",
    "الرجل على اليسار",
    "the 🐶🐶🐶 on the left 👈",
    "👩\u200d💻",
    "the man " + "in the red shirt " * 600,  # 10 000 characters, far past CLIP's 77 tokens
    "x" * 10_000,
]


def test_hard_expressions_run_through_the_engine(engine):
    from workers.engine.core.types import ImageInput

    assert len(HARD_EXPRESSIONS[4]) > 10_000 - 20
    rgb = np.zeros((48, 64, 3), dtype=np.uint8)
    rgb[10:30, 8:40] = (200, 40, 40)
    image = ImageInput(rgb=rgb, sha256=hashlib.sha256(rgb.tobytes()).hexdigest())
    config = {"proposal_source": "sam_tiny", "amg": {"points_per_side": 2, "pred_iou_thresh": 0.0,
              "stability_score_thresh": 0.0}}  # fmt: skip
    ranked = engine.predict(image, HARD_EXPRESSIONS, pipeline="global_local", config=config).candidates
    assert len(ranked) == len(HARD_EXPRESSIONS)
    assert all(ranked), "every expression gets candidates"
    for candidates in ranked:
        assert all(np.isfinite(c.score) for c in candidates)
    text_calls = engine.meter.snapshot()["models"]
    assert any(name.endswith(":text") for name in text_calls), text_calls


def test_the_clip_tokenizer_truncates_to_its_context(engine):
    bundle = engine.hub.get("clip_tiny")
    tokens = bundle.tokenizer(HARD_EXPRESSIONS)
    assert tuple(tokens.shape) == (len(HARD_EXPRESSIONS), 77)
    assert (tokens[:, 0] == tokens[0, 0]).all()  # start-of-text everywhere
    eot = int(tokens.max())
    assert (tokens[4:, -1] == eot).all(), "a long text keeps its end-of-text token in the last place"
