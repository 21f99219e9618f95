"""The dashboard in a real headless Chromium (Playwright driving the system browser).

Streamlit runs as a real subprocess (``tuneloop.dashboard.launch``, as ``tuneloop dashboard``
does) against the seeded loopback server. The test labels three items with the keyboard alone
(1/2/3, with a skip and an undo in between) and then finds those three labels through the
API; it saves a screenshot of every page under ``test-artifacts/`` and the README's overview
screenshot as ``docs/dashboard-overview.png``.

Without /usr/bin/chromium the test is skipped, except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from dashboard_env import shared_env

from tuneloop.dashboard.launch import dashboard_env, start_dashboard, stop, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
README_SHOT = ROOT / "docs" / "dashboard-overview.png"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, request):
    """The seeded server and a real Streamlit process signed in as admin ("ops")."""
    env = shared_env(tmp_path_factory, request)
    port = free_port()
    log = (tmp_path_factory.mktemp("streamlit") / "streamlit.log").open("w")
    environ = dashboard_env(env.url, env.tokens["admin"])
    environ["TUNELOOP_DASHBOARD__REFRESH_SECONDS"] = "0"  # no auto-refresh: screenshots of a settled page
    proc = start_dashboard("127.0.0.1", port, environ, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(f"{url}/_stcore/health", [proc], timeout=60), "streamlit did not start"
        yield env, url
    finally:
        stop([proc])
        log.close()


def settle(page) -> None:
    """Wait until the script run is over and every element is drawn (no faded stale ones, no skeletons)."""
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")
    page.wait_for_function("!document.querySelector('[data-stale=\"true\"], [data-testid=\"stSkeleton\"]')")


def open_page(page, url: str, heading: str) -> None:
    page.goto(url)
    page.get_by_role("heading", name=heading).first.wait_for()
    settle(page)


def shoot(page, path: Path) -> None:
    settle(page)
    page.screenshot(path=str(path), animations="disabled", timeout=120_000)


def no_errors(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, "a traceback is shown"


def current_text(page) -> str:
    return page.locator(".st-key-label-text").inner_text().strip()


def test_label_with_the_keyboard_and_screenshot_every_page(browser, site):
    env, url = site
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1440, "height": 1750})
    page.set_default_timeout(90_000)

    open_page(page, url, "Overview")
    page.locator(".js-plotly-plot .main-svg").nth(2).wait_for()  # traffic, accuracy and drift charts drawn
    no_errors(page)
    README_SHOT.parent.mkdir(exist_ok=True)
    shoot(page, README_SHOT)
    shoot(page, ARTIFACTS / "overview.png")

    page.set_viewport_size({"width": 1440, "height": 1000})
    open_page(page, f"{url}/label", "Label")
    page.wait_for_function("typeof window.__tuneloopKeyHandler === 'function'")  # the keyboard listener is on
    no_errors(page)
    labelled: dict[str, str] = {}

    def press(key: str) -> str:
        before = current_text(page)
        page.keyboard.press(key)
        page.wait_for_function("t => { const e = document.querySelector('.st-key-label-text');"
                               " return e && e.innerText.trim() !== t; }", arg=before)
        return before

    labelled[press("1")] = "negative"
    skipped = press("s")
    assert press("u") != skipped  # undo brings the skipped item back
    assert current_text(page) == skipped
    labelled[press("2")] = "neutral"
    labelled[press("3")] = "positive"
    shoot(page, ARTIFACTS / "label.png")
    no_errors(page)

    api = httpx.Client(base_url=env.url, headers={"Authorization": f"Bearer {env.tokens['admin']}"})
    rows = api.get("/v1/predictions", params={"labelled": "true", "limit": 1000}).json()["items"]
    human = {r["text"]: r["true_label"] for r in rows if r.get("feedback_source") == "human"}
    for text, label in labelled.items():
        assert human.get(text) == label, (text, label)

    for path, heading in (("drift", "Drift"), ("models", "Models & retraining"), ("alerts", "Alerts")):
        open_page(page, f"{url}/{path}", heading)
        no_errors(page)
        shoot(page, ARTIFACTS / f"{path}.png")
    page.close()
