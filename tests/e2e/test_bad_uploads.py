"""Bad uploads in a real browser: each file gets its own message on the page, and nothing stored before
is lost (the earlier image stays listed and its file is still served)."""

from __future__ import annotations

import io
import zipfile

import pytest

from tests.e2e.conftest import shot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.services]


def _png(width: int, height: int, color=(30, 120, 200)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.coffee()).resize((200, 133)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def bad_files(tmp_path):
    files = {}
    files["notes.jpg"] = b"These are meeting notes, not a picture.\n" * 20
    whole = _jpeg()
    files["truncated.jpg"] = whole[: len(whole) // 2]
    from PIL import Image

    wide = io.BytesIO()
    Image.new("L", (60000, 1), 128).save(wide, format="PNG")
    files["panorama.png"] = wide.getvalue()
    slip = io.BytesIO()
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("../escape.png", _png(8, 8))
        archive.writestr("../../etc/evil.png", _png(9, 9, (1, 2, 3)))
    files["slip.zip"] = slip.getvalue()
    paths = []
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_bad_uploads_each_get_a_message_and_nothing_is_lost(
    page, live_server, user, bad_files, tmp_path, django_user_model
):
    from server.ris.models import Image
    from server.ris.services import project_create

    project = project_create(name="Uploads", created_by=user)
    good = tmp_path / "coffee.jpg"
    good.write_bytes(_jpeg())
    sign_in(page, live_server)
    page.goto(f"{live_server.url}/projects/{project.pk}/upload/")
    page.set_input_files("#file-input", str(good))
    page.locator(".upload-row.is-ok").wait_for()
    kept = Image.objects.get()
    stored_bytes = good.read_bytes()

    page.set_input_files("#file-input", [str(p) for p in bad_files])
    for path in bad_files:
        row = page.locator(f".upload-row[data-name='{path.name}']")
        row.locator(".bad").first.wait_for()
        assert "is-error" in row.get_attribute("class"), path.name
    texts = {
        p.name: page.locator(f".upload-row[data-name='{p.name}'] .upload-details").inner_text()
        for p in bad_files
    }
    shot(page, "bad-uploads")
    for name, text in texts.items():
        assert len(text.strip()) > 20, (name, text)
    assert "60000" in texts["panorama.png"] or "60,000" in texts["panorama.png"], texts["panorama.png"]
    assert ".." in texts["slip.zip"], texts["slip.zip"]
    assert page.locator(".upload-summary, #upload-summary").inner_text().find("1 stored") >= 0

    # Nothing stored before is lost: still one image, listed, and its file served unchanged.
    assert list(Image.objects.values_list("pk", flat=True)) == [kept.pk]
    response = page.request.get(f"{live_server.url}/api/images/{kept.pk}/file/")
    assert response.status == 200 and response.body() == stored_bytes
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.locator(".image-card").first.wait_for()
    assert page.locator(".image-card").count() == 1
    page.wait_for_function(
        "() => [...document.querySelectorAll('.image-card img')].every((i) => i.complete && i.naturalWidth > 0)"
    )
    shot(page, "image-list-after-bad-uploads")

    # Members are added by name from the same page; an unknown name gets a message.
    django_user_model.objects.create_user(username="bob", password="pw-for-tests")
    page.fill("#member-username", "nobody")
    page.click("#member-form button")
    page.locator("#member-form .form-error", has_text="no user named 'nobody'").wait_for()
    page.fill("#member-username", "bob")
    page.click("#member-form button")
    page.locator("#member-names", has_text="bob").wait_for()
    assert project.members.filter(username="bob").exists()
    assert not page.js_errors, page.js_errors
