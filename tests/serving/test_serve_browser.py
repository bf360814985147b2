"""The service's page in a real browser (Debian chromium, headless, driven by Playwright; nothing downloaded): type
a token and a prompt, get the image and the warnings; a flagged image comes back blurred, a blocked prompt with a
warning and no image, a wrong token with an error; no CSP violation, and the token never reaches a URL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serving.conftest import TOKENS

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]

pytestmark = pytest.mark.browser


@pytest.fixture
def browser_page():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make setup-browser installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        yield page
        browser.close()


def submit(page, prompt: str) -> str:
    """Type ``prompt``, press Generate and wait for the reply; returns the page's state (done or error)."""
    page.fill("#prompt", "")
    page.focus("#prompt")
    page.keyboard.type(prompt)
    page.click("#generate")
    page.wait_for_function("() => ['done', 'error'].includes(document.body.dataset.state)", timeout=60000)
    return page.evaluate("document.body.dataset.state")


def warnings(page) -> list[str]:
    return page.eval_on_selector_all("#warnings li", "items => items.map(item => item.textContent)")


def image_shown(page) -> bool:
    return page.evaluate("""() => { const image = document.getElementById('image');
        return !image.classList.contains('hidden') && image.complete && image.naturalWidth === 32
               && image.src.startsWith('blob:'); }""")


def test_type_a_prompt_get_an_image_and_warnings(browser_page, live):
    page, server = browser_page, live()
    console, requests = [], []
    page.on("console", lambda message: console.append(message.text))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"http://{server.host}:{server.port}/")
    page.focus("#token")
    page.keyboard.type(TOKENS["alice"])

    assert submit(page, "a dog at the beach") == "done"
    page.wait_for_function("() => document.getElementById('image').naturalWidth === 32")
    assert image_shown(page) and page.evaluate("document.body.dataset.outcome") == "clean"
    assert warnings(page) == ["The prompt was rewritten before generation: 'a dog at the beach, wearing a suit' "
                              "(beach)."]
    assert "a dog at the beach, wearing a suit" in page.text_content("#caption")

    # flagged twice: regenerated once, then blurred, with the warnings listed
    server.scorer.flag_next = 2
    assert submit(page, "a red ball") == "done"
    page.wait_for_function("() => document.body.dataset.outcome === 'blurred'")
    page.wait_for_function("() => document.getElementById('image').naturalWidth === 32")
    assert image_shown(page)
    assert any("blurred" in text for text in warnings(page))
    assert page.text_content("#caption").startswith("Blurred")

    # a blocked prompt: a warning, no image; markup in a prompt stays text
    assert submit(page, "a nude <b>cat</b>") == "done"
    assert page.evaluate("document.body.dataset.outcome") == "blocked"
    assert not page.is_visible("#image")
    assert "prompt filter blocked it" in warnings(page)[0]
    assert page.evaluate("document.querySelectorAll('#warnings b, #caption b').length") == 0

    # a wrong token: an error, the last result is kept
    page.fill("#token", "someone-elses-token-000")
    assert submit(page, "a dog") == "error"
    assert page.text_content("#status") == "unknown token"

    assert [entry["outcome"] for entry in server.log_entries()] == ["clean", "blurred", "blocked"]
    assert not [text for text in console if "Content Security Policy" in text or "Refused" in text]
    assert all(token not in url for url in requests for token in TOKENS.values())
