"""The search page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium): one app process and one browser for the session.

Skips when no Chromium is installed (``.ci/run`` installs it). With
``UPDATE_DOCS_SCREENSHOT=1`` the screenshot goes to ``docs/search-app.png`` (the README's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from imgrag.emulators.chroma_server import free_port
from tests.app_support import HOSTILE_KEY, app_catalog
from tests.conftest import COLOURS, image_bytes
from tests.fake_openai import API_KEY, FakeOpenAI
from tests.processes import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("no headless Chromium here: apt-get install chromium chromium-driver "
                "(.ci/run does) to run the browser test", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "search-app.png"
WAIT_S = 30  # generous: a loaded machine is slow, never wrong


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def app_url(tmp_path_factory) -> Iterator[str]:
    """``python -m imgrag.app`` over the test catalog, with the Titan emulator and the fake
    OpenAI server up."""
    catalog_gen = app_catalog(tmp_path_factory)
    catalog = next(catalog_gen)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with FakeOpenAI() as openai:
        env = os.environ | {"AWS_ENDPOINT_URL_BEDROCK_RUNTIME": catalog.bedrock.url,
                            "OPENAI_BASE_URL": openai.url, "OPENAI_API_KEY": API_KEY}
        log = tmp_path_factory.mktemp("app-log") / "app.err"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "imgrag.app", "--port", str(port), "--chroma-path",
                 str(catalog.settings.chroma_path), "--collection", "catalog"],
                env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_until(lambda: healthy(url), 120, "the app to answer /healthz", proc)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    catalog_gen.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,860", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def wait(browser, condition, what: str):
    return WebDriverWait(browser, WAIT_S).until(lambda d: condition(d), message=what)


def cards(browser) -> list[WebElement]:
    return browser.find_elements(By.CSS_SELECTOR, "#grid .card")


def ids(browser) -> list[str]:
    return [c.get_attribute("data-id") for c in cards(browser)]


def url_state(browser) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(browser.current_url).query).items()}


def search_done(browser, **expected: str):
    """Wait for the URL to hold ``expected`` and the grid to show that search's hits."""
    def shown(d) -> bool:
        search = urlsplit(d.current_url).query
        return (expected.items() <= url_state(d).items()
                and d.find_element(By.TAG_NAME, "body").get_attribute("data-shown")
                == (f"?{search}" if search else ""))

    wait(browser, shown, f"the hits of a search with {expected}")


def test_search_more_like_this_filter_upload_and_hostile_key(app_url, browser, tmp_path):
    browser.get(app_url)
    box = wait(browser, lambda d: d.find_element(By.ID, "q"), "the search box")
    browser.find_element(By.TAG_NAME, "body").click()
    browser.find_element(By.TAG_NAME, "body").send_keys("/")
    assert browser.switch_to.active_element == box  # "/" focuses the box

    box.send_keys("red", Keys.ENTER)  # Enter searches
    search_done(browser, q="red")
    assert all("red-" in i for i in ids(browser)[:3]), ids(browser)
    assert "image unavailable" not in browser.find_element(By.ID, "grid").text
    first = cards(browser)[0]
    assert first.find_element(By.CSS_SELECTOR, ".uri").get_attribute("title") == ids(browser)[0]

    shown = ids(browser)[0]
    first.find_element(By.CSS_SELECTOR, "button.more").click()  # more like this
    search_done(browser, similar=shown)
    assert shown not in ids(browser) and "red-" in ids(browser)[0]

    browser.get(f"{app_url}/?q=red")
    search_done(browser, q="red")
    browser.find_element(By.CSS_SELECTOR, "#filters summary").click()
    browser.find_element(By.ID, "f-prefix").send_keys("catalog/shoes/", Keys.ENTER)
    search_done(browser, q="red", prefix="catalog/shoes/")
    wait(browser, lambda d: len(ids(d)) == 2, "two hits under catalog/shoes/")
    assert all("/catalog/shoes/" in i for i in ids(browser))

    example = tmp_path / "my red photo.png"
    example.write_bytes(image_bytes(COLOURS["red"], size=(90, 60), fmt="PNG", seed=5))
    browser.find_element(By.ID, "f-prefix").clear()
    browser.find_element(By.ID, "file").send_keys(str(example))  # query by an uploaded image
    wait(browser, lambda d: "upload" in url_state(d), "the upload's URL")
    search_done(browser)
    assert "red-" in ids(browser)[0]
    browser.refresh()  # the upload is in the URL: a reload shows the same hits
    search_done(browser)
    assert "red-" in ids(browser)[0]

    browser.get(f"{app_url}/?q=green&k=20")
    search_done(browser, q="green")
    hostile = next(c for c in cards(browser) if "onerror" in c.get_attribute("data-id"))
    label = hostile.find_element(By.CSS_SELECTOR, ".uri")  # shortened, the full URI on hover
    assert label.text.startswith("archive/<") and "…" in label.text
    assert label.text.endswith('"q" \'x\'␉.png')  # the tab shows as a symbol
    assert label.get_attribute("title") == hostile.get_attribute("data-id")
    assert browser.find_elements(By.CSS_SELECTOR, "img[src='x']") == []
    hostile.find_element(By.CSS_SELECTOR, "button.thumb").click()  # the detail view
    title = wait(browser, lambda d: d.find_element(By.ID, "detail-title"), "the detail view")
    wait(browser, lambda d: d.find_element(By.ID, "detail-meta").text, "the metadata")
    assert HOSTILE_KEY.replace("\t", "␉") in browser.find_element(By.ID, "detail-meta").text
    assert "<img src=x onerror=alert(1)>" in title.text
    assert "detail" in url_state(browser)
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - nothing ran


def test_summary_button_phone_width_and_screenshot(app_url, browser, tmp_path):
    browser.get(f"{app_url}/?q=red&k=8")
    search_done(browser, q="red")
    wait(browser, lambda d: d.find_elements(By.ID, "summarize"), "the summary button")
    browser.find_element(By.ID, "summarize").click()
    wait(browser, lambda d: "Summary" in d.find_element(By.ID, "summary").text, "a summary")
    assert "S1" in browser.find_element(By.ID, "summary").text
    wait(browser, lambda d: "last ingest" in d.find_element(By.ID, "stats").text, "the stats")
    wait(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#grid img')]"
        ".filter(i => i.getBoundingClientRect().top < innerHeight)"  # lazy ones load later
        ".every(i => i.complete && i.naturalWidth > 0)"), "every thumbnail in view loaded")
    path = SCREENSHOT if os.environ.get("UPDATE_DOCS_SCREENSHOT") else tmp_path / "app.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    browser.set_window_size(390, 844)  # a phone: no sideways scrolling
    try:
        wide = browser.execute_script(
            "return document.documentElement.scrollWidth > window.innerWidth")
        assert not wide
    finally:
        browser.set_window_size(1280, 860)
    problems = [e["message"] for e in browser.get_log("browser")
                if "Content Security Policy" in e["message"] or e["level"] == "SEVERE"]
    assert problems == []
