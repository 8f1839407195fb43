"""flava.serve's page in a real browser (Debian's chromium, headless, through selenium and the
system chromedriver): what a person sees after typing a query, uploading a picture, or making
a mistake."""

from __future__ import annotations

import json
import shutil
import urllib.parse
from pathlib import Path

import pytest

from ..data import sample_data
from .serving import call, messy_index, serving

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,900",
]

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="chromium and chromium-driver are not installed (apt-get install chromium "
    "chromium-driver; .ci/run installs them)",
)


def open_browser(profile: Path):
    """Headless chromium driven through the system chromedriver (no driver download)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def page(tiny_model, messy_pairs, tmp_path_factory):
    """(the browser on the served page, the server's URL)."""
    index = messy_index(tiny_model, messy_pairs, tmp_path_factory.mktemp("page_index"))
    profile = tmp_path_factory.mktemp("chromium_profile")
    with serving(index) as url:
        browser = open_browser(profile)
        try:
            browser.set_page_load_timeout(30)
            browser.get(url + "/")
            wait(browser, "document.body.dataset.ready === 'true'")
            yield browser, url
        finally:
            browser.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(browser, condition: str, seconds: float = 20) -> None:
    """Wait until a JavaScript condition holds on the page."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, seconds).until(lambda b: b.execute_script(f"return {condition}"))


def shown(browser) -> list[dict]:
    """What the grid shows, card by card, once every thumbnail has loaded or failed."""
    wait(browser, "!document.body.classList.contains('busy')")
    wait(browser, "[...document.querySelectorAll('#results img')].every(i => i.complete)")
    return browser.execute_script(
        """return [...document.querySelectorAll('#results figure')].map(f => ({
            key: f.dataset.key,
            caption: f.querySelector('.caption').textContent,
            score: f.querySelector('.score').textContent,
            width: f.querySelector('img').naturalWidth,
            visible: f.querySelector('img').getBoundingClientRect().width,
        }))"""
    )


def error_text(browser) -> str:
    return browser.execute_script(
        "const e = document.getElementById('error'); return e.hidden ? '' : e.textContent"
    )


def api(url: str, path: str) -> dict:
    return json.loads(call(url + path)[2])


def test_the_page_shows_the_collection(page):
    browser, _ = page
    info = browser.find_element("id", "info").text
    assert info.startswith("9 records") and "flat index" in info
    assert error_text(browser) == ""


def test_a_typed_query_shows_the_apis_results_as_thumbnails(page):
    from selenium.webdriver.common.keys import Keys

    browser, url = page
    q = sample_data.captions_of(3)[0]
    box = browser.find_element("id", "q")
    box.clear()
    box.send_keys(q, Keys.ENTER)
    wait(browser, "document.querySelectorAll('#results figure').length > 0")
    cards = shown(browser)
    answer = api(url, f"/api/search?{urllib.parse.urlencode({'q': q})}")["results"]
    assert [c["key"] for c in cards] == [r["key"] for r in answer] and len(cards) == 6
    assert [c["caption"] for c in cards] == [r["caption"] for r in answer]
    assert [c["score"] for c in cards] == [f"{r['score']:.3f}" for r in answer]
    assert all(c["width"] > 0 and c["visible"] > 100 for c in cards), cards  # loaded, shown
    assert browser.find_element("id", "status").text.startswith("6 results in ")
    assert error_text(browser) == ""


def test_an_uploaded_picture_finds_its_record_first(page, messy_pairs):
    browser, _ = page
    name = next(
        f for f, _, reason in sample_data.messy_files(10) if reason is None and f.endswith("_P.png")
    )
    browser.find_element("id", "picture").send_keys(str(messy_pairs / "images" / name))
    wait(browser, f"document.querySelector('#results figure')?.dataset.key === 'images/{name}'")
    cards = shown(browser)
    assert cards[0]["key"] == f"images/{name}" and float(cards[0]["score"]) > 0.999
    assert all(c["width"] > 0 for c in cards) and error_text(browser) == ""
    assert browser.execute_script("return !document.getElementById('query-picture').hidden")


def test_mistakes_show_one_sentence_and_the_page_goes_on(page, tmp_path):
    from selenium.webdriver.common.keys import Keys

    browser, _ = page
    box = browser.find_element("id", "q")
    box.clear()
    box.send_keys("   ", Keys.ENTER)
    wait(browser, "!document.getElementById('error').hidden")
    assert error_text(browser) == "the text query is empty; type what to look for"
    assert shown(browser) == []
    not_a_picture = tmp_path / "notes.png"
    not_a_picture.write_text("a shopping list, not a picture\n")
    browser.find_element("id", "picture").send_keys(str(not_a_picture))
    wait(browser, "document.getElementById('error').textContent.includes('not an image')")
    message = error_text(browser)
    assert message.startswith("the query is not an image that can be read") and "\n" not in message
    too_large = tmp_path / "huge.png"  # the served limit is 64 KB
    too_large.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(5_000_000))
    browser.find_element("id", "picture").send_keys(str(too_large))
    wait(browser, "document.getElementById('error').textContent.includes('limit')")
    assert error_text(browser).startswith("the upload is larger than this server's limit of 64 KB")
    box.clear()
    box.send_keys("a cup of coffee", Keys.ENTER)
    wait(browser, "document.getElementById('error').hidden")
    assert len(shown(browser)) == 6
