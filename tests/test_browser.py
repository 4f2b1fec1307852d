"""The app in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright types a
prompt, clicks Generate and sees an image; a path outside the models folder shows an error.

Skipped, with the reason, where ``/usr/bin/chromium`` or the Playwright package is missing
(``.ci/run`` installs Chromium). Playwright's own browser downloads are never used.
Set ``LATENTGEN_SCREENSHOTS=DIR`` to keep the screenshots.
"""

from __future__ import annotations

import pytest

from tests.browser_util import generated_image, keep, open_page, require_browser, tiny_app

pytestmark = pytest.mark.browser
require_browser()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with tiny_app(tmp_path_factory.mktemp("browser")) as app:
        yield app


@pytest.fixture(scope="module")
def page(app):
    with open_page(app.demo.local_url, "#generate") as page:
        yield page


def test_type_prompt_click_generate_see_image(page, tmp_path):
    page.fill("#prompt textarea", "a red circle left of a blue square")
    page.fill("#steps input[type=number]", "4")
    page.press("#steps input[type=number]", "Tab")
    generated_image(page)
    assert "Seed used" in page.inner_text("body")
    assert keep(page, tmp_path, "generate.png").stat().st_size > 0


def test_bad_model_path_is_an_error_on_the_page(page, tmp_path):
    box = page.get_by_label("Model", exact=True)
    box.fill("../../etc")
    box.blur()
    page.click("#generate")
    toast = page.wait_for_selector("text=contains '..'", timeout=60_000)
    assert toast is not None
    keep(page, tmp_path, "error.png")
