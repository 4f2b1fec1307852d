"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright.

``require_browser()`` skips the calling module, with the reason, where ``/usr/bin/chromium`` or the
Playwright package is missing (``.ci/run`` installs Chromium); Playwright's own browser downloads are
never used. ``open_page(url)`` gives a page on the app, ``keep(page, tmp_path, name)`` a screenshot
(also copied into ``$LATENTGEN_SCREENSHOTS`` when that is set).
"""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def require_browser():
    """Playwright's sync API; skips the calling test module where Chromium or Playwright is missing."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"{CHROMIUM} is absent (apt-get install chromium; .ci/run installs it)", allow_module_level=True
        )
    return pytest.importorskip(
        "playwright.sync_api",
        reason="the playwright package is not installed (pip install playwright; no browser download is needed)",
    )


@contextlib.contextmanager
def open_page(url: str, ready: str, timeout_ms: int = 60_000):
    """A page on ``url`` in headless Chromium, once the element ``ready`` (a selector) is there."""
    sync_api = require_browser()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            page.wait_for_selector(ready)
            yield page
        finally:
            browser.close()


def keep(page, tmp_path, name: str):
    """A full-page screenshot at ``tmp_path/name`` (and in ``$LATENTGEN_SCREENSHOTS`` when set)."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    folder = os.environ.get("LATENTGEN_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        shutil.copy(path, folder)
    return path


def generated_image(page):
    """Click Generate and return the gallery's finished <img>, at the tiny model's native 16 px. The final
    status comes first: a preview can fill the gallery before the final image replaces it, and an <img>
    whose src is being swapped reads naturalWidth 0 meanwhile."""
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#status-line').innerText.includes('image(s) in')")
    img = page.wait_for_selector("#gallery img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img)
    assert img.evaluate("img => img.naturalWidth") == 16
    return img


@contextlib.contextmanager
def tiny_app(root, data_dir=None):
    """The app on a tiny model (``tiny``) in ``root/models``, no bundled model, ``data_dir`` as ``--data-dir``."""
    from latentgen.ui import AppConfig, serve
    from tests.conftest import free_port
    from tests.tiny_models import make_tiny_pipeline

    make_tiny_pipeline(root / "models", name="tiny")
    (root / "no_bundle").mkdir()
    extra = {"data_dir": str(data_dir)} if data_dir else {}
    app = serve(AppConfig(models_dir=str(root / "models"), bundled_dir=str(root / "no_bundle"), port=free_port(),
                          **extra), block=False)
    try:
        yield app
    finally:
        app.close()
