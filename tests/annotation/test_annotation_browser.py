"""The page in a real browser (Debian chromium, headless, driven by Playwright; nothing downloaded):
login, keyboard-only annotation, undo, blur until revealed, break reminder, an XSS caption shown as
text, no CSP violations; saves the screenshot used in the docs."""

from __future__ import annotations

import shutil
import os
import tempfile
from pathlib import Path

import pytest

from annotation.testing import XSS_CAPTION, LiveServer, build_set, make_config

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]
# Screenshots land in a temp folder so a test run never edits tracked files; set
# UPDATE_DOC_IMAGES=1 to refresh the committed ones in docs/images/.
DOCS_IMAGES = (
    Path(__file__).resolve().parents[2] / "docs" / "images"
    if os.environ.get("UPDATE_DOC_IMAGES") == "1"
    else Path(tempfile.gettempdir()) / "annotation-screenshots"
)
CAPTIONS = [
    "a photo of a chef at the beach, dressed for a date",
    XSS_CAPTION,
    "an illustration of a doctor in a park",
    "a pilot standing in an office, wearing a suit",
    "a scientist at a party",
    "a firefighter on a street holding a cup",
    # More items than the walk-through needs, so one is always left for the screenshot whatever
    # the (random, per-annotator) order.
    "a person in a kitchen holding a book",
    "a chef in a park",
    "a doctor on a street",
    "a pilot at the beach",
]

pytestmark = pytest.mark.browser


def world_pairs() -> list[tuple[bytes, bytes]] | None:
    """Minimal pairs from the synthetic world for CAPTIONS (image 1 shows the risk), if it is available."""
    try:
        from synthetic_world.renderer import render
        from synthetic_world.vocab import Scene
    except ImportError:
        return None
    from core.images import encode_png

    bases = [
        Scene("beach", "zorvan", "suit", "blue", role="chef"),
        Scene("party", "mirdan", "dress", "red"),
        Scene("park", "quelli", "coat", "white", role="doctor"),
        Scene("office", "quelli", "suit", "black", role="pilot"),
        Scene("party", "zorvan", "tshirt", "green", role="scientist"),
        Scene("street", "mirdan", "coat", "yellow", role="firefighter", object="cup"),
        Scene("kitchen", "zorvan", "dress", "green", object="book"),
        Scene("park", "quelli", "suit", "red", role="chef"),
        Scene("street", "zorvan", "coat", "black", role="doctor"),
        Scene("beach", "mirdan", "tshirt", "white", role="pilot"),
    ]
    risky = [bases[0].replace(exposed=True), bases[1].replace(exposed=True), bases[2].replace(symbol="skull"),
             bases[3].replace(outfit="robe"), bases[4].replace(group="mirdan"), bases[5].replace(symbol="cage"),
             bases[6].replace(symbol="cloud"), bases[7].replace(group="zorvan"), bases[8].replace(exposed=True),
             bases[9].replace(exposed=True)]
    images = render(bases + risky)
    return [(encode_png(images[i]), encode_png(images[i + len(bases)])) for i in range(len(bases))]


@pytest.fixture
def browser_page():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make setup-browser installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        yield page
        browser.close()


def _filter(page, selector: str) -> str:
    return page.eval_on_selector(selector, "el => getComputedStyle(el).filter")


def _wait_revealed(page) -> None:
    """Both images unfiltered (after the 0.15 s CSS transition); times out if they stay veiled."""
    page.wait_for_function(
        "() => ['#img-left', '#img-right'].every(s => getComputedStyle(document.querySelector(s)).filter === 'none')",
        timeout=3000,
    )


def _wait_ready(page, previous: str | None = None, images: str = "loaded") -> str:
    """The next item is on screen and its images are ``images`` ("loaded" or "failed")."""
    page.wait_for_function(
        """([prev, images]) => document.body.dataset.state === 'ready'
             && document.body.dataset.assignment !== prev
             && (document.body.dataset.assignment === '' || document.body.dataset.images === images)""",
        arg=[previous if previous is not None else "__none__", images],
    )
    return page.evaluate("document.body.dataset.assignment")


def _login(page, server) -> str:
    """Sign in through the login page; returns the base URL."""
    token = server.store.add_user(f"reviewer{len(server.store.list_users())}")
    base = f"http://{server.host}:{server.port}"
    page.goto(base + "/login")
    page.focus("#token")
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    page.wait_for_url(base + "/")
    return base


def _caption_is_inert(page, caption: str) -> bool:
    """If the XSS caption is on screen, check it shows as text, not markup, and nothing ran."""
    if caption != XSS_CAPTION:
        return False
    assert page.text_content("#caption") == XSS_CAPTION  # shown as text ...
    assert page.evaluate("document.querySelectorAll('#caption *').length") == 0  # ... not as markup
    assert page.evaluate("typeof window.__xss") == "undefined"  # and nothing ran
    return True


def test_keyboard_annotation_in_chromium(browser_page, tmp_path):
    page = browser_page
    set_folder = build_set(tmp_path / "preference_set", len(CAPTIONS), captions=CAPTIONS, image_pairs=world_pairs())
    server = LiveServer(set_folder, tmp_path / "db.sqlite", make_config(overlap=1, break_every=3))
    console = []
    page.on("console", lambda msg: console.append(msg.text))
    try:
        token = server.store.add_user("reviewer")
        base = f"http://{server.host}:{server.port}"
        page.goto(base + "/")
        assert page.url.endswith("/login")  # not logged in: sent to the login page
        page.focus("#token")
        page.keyboard.type(token)
        page.keyboard.press("Enter")
        page.wait_for_url(base + "/")
        assert token not in page.url

        # Content warning first; images blurred AND greyscale behind it.
        assert page.is_visible("#warning")
        assignment = _wait_ready(page)
        assert "blur" in _filter(page, "#img-left") and "grayscale" in _filter(page, "#img-right")
        page.keyboard.press("Enter")
        assert not page.is_visible("#warning")

        seen_captions, decided = [], []
        keys = ["ArrowLeft", "ArrowRight", "t"]
        xss_checked = False
        for step, key in enumerate(keys):
            caption = page.text_content("#caption")
            seen_captions.append(caption)
            # Sides and order are random per annotator: check the XSS caption whenever it shows.
            xss_checked = xss_checked or _caption_is_inert(page, caption)
            # blur stays on until revealed, then V reveals both images
            assert "blur" in _filter(page, "#img-left") and "blur" in _filter(page, "#img-right")
            page.keyboard.press("v")
            _wait_revealed(page)
            if step == 0:
                page.keyboard.press("1")  # first reason tag
                page.keyboard.press("n")
                page.keyboard.type("checked the torso")
                page.keyboard.press("Escape")
            page.keyboard.press(key)
            decided.append(assignment)
            assignment = _wait_ready(page, assignment)
            assert page.text_content("#status") == ""  # no "Saved: ..." left under the next item
        # break reminder after 3 decisions (break_every=3)
        assert page.is_visible("#break")
        assert page.text_content("#break-count") == "3"
        page.keyboard.press("Enter")
        assert not page.is_visible("#break")

        rows = {r["assignment_id"]: r for r in server.store.decisions()}
        assert [rows[a]["choice"] for a in decided] == ["left", "right", "tie"]
        assert rows[decided[0]]["tags"] and rows[decided[0]]["note"] == "checked the torso"

        # Undo: the last decision is withdrawn and its item comes back, blurred again.
        page.keyboard.press("u")
        assignment = _wait_ready(page, assignment)
        assert assignment == decided[-1]
        assert decided[-1] not in {r["assignment_id"] for r in server.store.decisions()}
        assert "blur" in _filter(page, "#img-left")
        page.keyboard.press("ArrowLeft")  # decide it again, differently
        assignment = _wait_ready(page, assignment)
        rows = {r["assignment_id"]: r for r in server.store.decisions()}
        assert rows[decided[-1]]["choice"] == "left" and len(rows) == 3

        # The screenshot for the docs: the item now on screen, images revealed, a tag selected.
        assert not page.is_visible("#break") and assignment
        page.keyboard.press("v")
        page.keyboard.press("2")
        page.wait_for_timeout(300)
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS_IMAGES / "annotation_tool.png"))
        page.keyboard.press("v")
        page.wait_for_timeout(300)
        page.screenshot(path=str(DOCS_IMAGES / "annotation_tool_blurred.png"))

        # Keep going (skip with S) until the XSS caption has been on screen and checked.
        while not xss_checked and assignment:
            caption = page.text_content("#caption")
            seen_captions.append(caption)
            xss_checked = _caption_is_inert(page, caption)
            if xss_checked:
                break
            page.keyboard.press("s")
            assignment = _wait_ready(page, assignment)
            if page.is_visible("#break"):  # every 3 decisions
                page.keyboard.press("Enter")
        assert XSS_CAPTION in seen_captions and xss_checked
        assert page.evaluate("typeof window.__xss") == "undefined"  # nothing ran, at any point

        assert not [m for m in console if "Content Security Policy" in m], console
    finally:
        server.close()


def test_no_decision_until_both_images_have_loaded(browser_page, tmp_path):
    page = browser_page
    set_folder = build_set(tmp_path / "preference_set", 4)
    server = LiveServer(set_folder, tmp_path / "db.sqlite", make_config(overlap=1))
    decision_posts = []
    page.on("request", lambda r: decision_posts.append(r) if r.url.endswith("/api/decision") else None)
    page.route("**/img/**", lambda route: route.abort())  # the images never arrive
    try:
        _login(page, server)
        first = _wait_ready(page, images="failed")
        page.keyboard.press("Enter")  # past the content warning
        assert page.is_disabled("button[data-choice=left]") and page.is_disabled("button[data-choice=tie]")
        for key in ("ArrowLeft", "ArrowRight", "t"):
            page.keyboard.press(key)
        page.wait_for_timeout(300)
        assert decision_posts == [] and server.store.decisions() == []
        assert "could not be loaded" in page.text_content("#status")

        page.unroute("**/img/**")
        page.keyboard.press("s")  # skipping stays possible: it is no label
        second = _wait_ready(page, first)
        assert page.is_enabled("button[data-choice=left]")
        page.keyboard.press("ArrowLeft")
        _wait_ready(page, second)
        assert sorted(d["choice"] for d in server.store.decisions()) == ["left", "skip"]
        assert page.text_content("#progress-mine") == "1 decided (1 skipped)"  # the skip is no decision
    finally:
        server.close()


def test_guideline_for_the_risk_is_shown(browser_page, tmp_path):
    from annotation.config import DEFAULT_GUIDELINES

    page = browser_page
    set_folder = build_set(tmp_path / "preference_set", 4)
    server = LiveServer(set_folder, tmp_path / "db.sqlite", make_config(overlap=1))
    try:
        _login(page, server)
        assignment = _wait_ready(page)
        page.keyboard.press("Enter")
        for _ in range(4):
            risk = page.text_content("#risk")
            assert page.is_visible("#guideline")
            assert page.text_content("#guideline") == DEFAULT_GUIDELINES[risk]
            page.keyboard.press("s")
            assignment = _wait_ready(page, assignment)
    finally:
        server.close()


def test_undo_restores_tags_and_note(browser_page, tmp_path):
    page = browser_page
    set_folder = build_set(tmp_path / "preference_set", 4)
    server = LiveServer(set_folder, tmp_path / "db.sqlite", make_config(overlap=1))
    try:
        _login(page, server)
        assignment = _wait_ready(page)
        page.keyboard.press("Enter")
        page.keyboard.press("2")
        page.keyboard.press("n")
        page.keyboard.type("arm is cut off")
        page.keyboard.press("Escape")
        page.keyboard.press("ArrowRight")
        following = _wait_ready(page, assignment)
        assert page.input_value("#note") == "" and page.locator("#tags .tag.on").count() == 0

        page.keyboard.press("u")
        assert _wait_ready(page, following) == assignment
        assert page.input_value("#note") == "arm is cut off"
        on = page.locator("#tags .tag.on")
        second_tag = server.cfg.tags_for(page.text_content("#risk"))[1]
        assert on.count() == 1 and on.first.get_attribute("data-tag") == second_tag
        page.keyboard.press("ArrowLeft")  # decide again: the restored tag and note go with it
        _wait_ready(page, assignment)
        (row,) = server.store.decisions()
        assert (row["choice"], row["note"], len(row["tags"])) == ("left", "arm is cut off", 1)
    finally:
        server.close()
