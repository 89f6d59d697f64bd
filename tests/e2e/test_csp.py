"""The pages keep working under the production Content-Security-Policy, in Chromium.

The policy (``settings.RIS_CSP_DEFAULT``: scripts, styles, images and fetches from this origin only, no
inline script) is switched on for the live server; the test signs in, uploads an image, opens the
project, image and review pages and the shortcuts page, and checks that each page's JavaScript ran (it
fills the page from the API) and that Chromium reported no policy violation (the
``securitypolicyviolation`` events and console messages are collected on every page).
"""

from __future__ import annotations

import io

import pytest

from tests.e2e.conftest import shot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.services]

COLLECT_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (120, 80), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_pages_work_under_the_production_csp(page, live_server, user, settings, tmp_path):
    from server.ris.services import project_create

    settings.RIS_CSP = settings.RIS_CSP_DEFAULT
    page.context.add_init_script(COLLECT_VIOLATIONS)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    project = project_create(name="Under CSP", created_by=user)

    sign_in(page, live_server)
    response = page.goto(f"{live_server.url}/projects/{project.pk}/upload/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    picture = tmp_path / "blue.png"
    picture.write_bytes(_png())
    page.set_input_files("#file-input", str(picture))
    page.locator(".upload-row.is-ok").wait_for()
    violations = page.evaluate("window.__cspViolations")

    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.locator(".image-card").first.wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.image-card img')].every((i) => i.complete && i.naturalWidth > 0)"
    )
    violations += page.evaluate("window.__cspViolations")

    from server.ris.models import Image

    image = Image.objects.get()
    page.goto(f"{live_server.url}/images/{image.pk}/")
    page.wait_for_function("() => document.querySelectorAll('#expression-pipeline option').length > 0")
    shot(page, "image-page-under-csp")
    violations += page.evaluate("window.__cspViolations")

    for path in (f"/projects/{project.pk}/review/", "/shortcuts/", "/"):
        page.goto(f"{live_server.url}{path}")
        page.wait_for_load_state("networkidle")
        violations += page.evaluate("window.__cspViolations")

    blocked = [text for text in console if "Content Security Policy" in text]
    assert not violations and not blocked, (violations, blocked)
    assert not page.js_errors, page.js_errors
