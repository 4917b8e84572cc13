"""The dashboard page: served offline with a strict CSP, fed by merged history, and
driven in a real headless Chromium (Debian chromium + chromedriver, via Selenium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock, configured_app
from flask import Flask
from servers import http
from werkzeug.serving import make_server

from flask_gatewayz_metrics import MetricsCollector, label_request
from flask_gatewayz_metrics.dashboard import ASSETS, PAGE

STATIC = Path(__file__).resolve().parent.parent / "flask_gatewayz_metrics" / "static"
ARTIFACTS = Path(os.environ.get("GATEWAYZ_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
HOSTILE = "<script>window.pwned=1</script>\"'><img src=x onerror=window.pwned=2>"


def make_app(tmp_path: Path, **config: Any) -> Flask:
    return configured_app(tmp_path, "dashboard_test", **config)[0]


def test_page_and_assets_are_served_with_a_strict_policy(tmp_path: Path) -> None:
    """The page and each asset answer 200 with a CSP that allows only same-origin files."""
    client = make_app(tmp_path).test_client()
    page = client.get("/metrics/dashboard")
    assert page.status_code == 200 and page.mimetype == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "unsafe" not in policy
    for name in re.findall(r'(?:src|href)="dashboard/([^"]+)"', page.get_data(as_text=True)):
        asset = client.get(f"/metrics/dashboard/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/metrics/dashboard/../views.py").status_code == 404
    assert client.get("/metrics/dashboard/nothing.js").status_code == 404


def test_page_is_small_and_self_contained() -> None:
    """Page plus assets weigh at most 150 KB and reference no other host; uPlot ships with its licence."""
    total = sum((STATIC / name).stat().st_size for name in (PAGE, *ASSETS))
    assert total <= 150_000, total
    for name in (PAGE, "dashboard.js", "dashboard.css"):
        text = (STATIC / name).read_text(encoding="utf-8")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), name
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "eval(" not in text
    assert "MIT License" in (STATIC / "uPlot.LICENSE").read_text()


def test_dashboard_needs_the_scrape_credentials_and_can_be_switched_off(tmp_path: Path) -> None:
    """With basic credentials the page challenges the browser; DASHBOARD=False removes it."""
    client = make_app(tmp_path / "a", auth_username="ops", auth_password="s3cret").test_client()
    denied = client.get("/metrics/dashboard")
    assert denied.status_code == 401 and "Basic" in denied.headers["WWW-Authenticate"]
    assert client.get("/metrics/dashboard/dashboard.js").status_code == 401
    assert client.get("/metrics/dashboard", auth=("ops", "s3cret")).status_code == 200
    off = make_app(tmp_path / "b", dashboard=False).test_client()
    assert off.get("/metrics/dashboard").status_code == 404


def _contrast(foreground: str, background: str) -> float:
    def luminance(colour: str) -> float:
        channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_colours_have_enough_contrast() -> None:
    """Every text/background pair of the stylesheet meets WCAG AA (4.5:1)."""
    css = (STATIC / "dashboard.css").read_text()
    colours = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6})", css))
    pairs = [("text", "bg-soft"), ("muted", "bg-soft"), ("good", "good-bg"), ("warn", "warn-bg"), ("bad", "bad-bg")]
    for fg, bg in pairs:
        assert _contrast(colours[fg], colours[bg]) >= 4.5, (fg, bg)
    for fg in ("text", "muted", "bad", "focus"):
        assert _contrast(colours[fg], "#ffffff") >= 4.5, fg


def test_history_merges_workers_slot_by_slot(metrics_dir: str, clock: FakeClock) -> None:
    """json?history=1 lists the window's slots oldest first, each summing every writer's requests."""
    first = MetricsCollector(metrics_dir, clock=clock, window_seconds=300, window_slots=5)
    second = MetricsCollector(metrics_dir, clock=clock, window_seconds=300, window_slots=5)
    clock.now = 1_700_000_080.0  # 40 s into a 60-s slot (1_700_000_040 is a slot boundary)
    for _ in range(3):
        first.record_request("/a", "GET", 0.010, 200, provider="openai")
    second.record_request("/b", "GET", 0.030, 500, provider="openai")
    clock.advance(60)
    second.record_request("/a", "GET", 0.020, 200, provider="anthropic")
    history = first.history().to_dict()
    points = history["requests"]
    assert [p["requests"] for p in points] == [4, 1]
    assert [p["errors"] for p in points] == [1, 0]
    assert points[1]["start"] - points[0]["start"] == 60.0 == history["slot_seconds"]
    assert points[1]["seconds"] == pytest.approx(40.0)
    assert points[0]["p50"] == pytest.approx(0.010, rel=0.011)
    assert [p["requests"] for p in history["providers"]["openai"]] == [4]
    clock.advance(600)  # everything ages out of the window
    assert first.history().to_dict()["requests"] == []
    first.close()
    second.close()


def test_history_since_start_is_one_slot(metrics_dir: str, clock: FakeClock) -> None:
    """With WINDOW_SECONDS = 0 the history is the single since-start slot, with no rate period."""
    collector = MetricsCollector(metrics_dir, clock=clock, window_seconds=0)
    collector.record_request("/a", "GET", 0.010, 200)
    clock.advance(10_000)
    collector.record_request("/a", "GET", 0.010, 200)
    history = collector.history().to_dict()
    assert history["slot_seconds"] == 0.0
    assert [(p["requests"], p["seconds"]) for p in history["requests"]] == [(2, None)]
    collector.close()


# ---------------------------------------------------------------- real browser
def _chrome(tmp_path: Path, width: int, height: int) -> Any:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.geteuid() == 0:
            pytest.fail("chromium / chromium-driver missing: scripts/test.sh installs them (apt-get)")
        pytest.skip("chromium / chromium-driver are not installed and this user cannot install them")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or ""
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--disable-default-apps", "--disable-extensions",
        f"--user-data-dir={tmp_path / f'chrome-{width}'}", f"--window-size={width},{height}",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or ""), options=options)
    # Headless windows are at least 500 px wide: emulate the screen instead (a phone too).
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    return driver


def _requested_urls(driver: Any) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _assert_only_loopback(driver: Any, base_url: str) -> None:
    """Every network request the browser made went to ``base_url`` (``data:`` and the
    browser's own ``chrome://`` pages never leave the machine)."""
    urls = [u for u in _requested_urls(driver) if re.match(r"(https?|wss?|ftp)://", u)]
    assert urls and all(u.startswith(base_url + "/") for u in urls), urls


def _table(driver: Any, table_id: str) -> dict[str, list[str]]:
    """Rows of a dashboard table: first cell's text -> the other cells' texts."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr'))"
        ".map(tr => Array.from(tr.children).map(c => c.textContent));",
        table_id,
    )
    return {row[0]: row[1:] for row in rows if len(row) > 1}


def _wait(condition: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError("condition not met in time")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = _chrome(tmp_path, 1280, 900)
    yield driver
    driver.quit()


@pytest.mark.slow
def test_page_shows_merged_traffic_and_updates(start_gunicorn: Any, browser: Any, tmp_path: Path) -> None:
    """Under gunicorn: empty state first, then the used endpoints/providers/models with /metrics/json's numbers."""
    server = start_gunicorn(workers=3)
    url = server.url + "/metrics/dashboard"
    browser.get(url)
    _wait(lambda: browser.find_element("id", "updated").text)
    models = ("gpt-4", "claude-3-haiku", "gemini-1.5-pro")
    for i in range(30):
        status, _ = http("POST", server.url + "/api/chat", {"model": models[i % 3], "message": "hi"})
        assert status == 200
    expected = json.loads(http("GET", server.url + "/metrics/json")[1])
    chat = f"{expected['endpoints']['/api/chat']['requests']:,}"
    _wait(lambda: _table(browser, "endpoints").get("/api/chat", [""])[0] == chat)
    assert not browser.find_element("id", "empty").is_displayed()
    providers = _table(browser, "providers")
    for provider, entry in expected["providers"].items():
        assert providers[provider][0] == f"{entry['requests']:,}"
    page_models = _table(browser, "models")
    for model, entry in expected["models"].items():
        assert page_models[model][0] == f"{entry['requests']:,}"
    assert set(models) <= set(page_models)
    assert browser.find_element("id", "status").text in ("healthy", "degraded", "unhealthy")
    assert browser.execute_script("return document.querySelectorAll('#chart-rate canvas').length") == 1

    for _ in range(10):
        http("POST", server.url + "/api/chat", {"model": "gpt-4", "message": "again"})
    updated = json.loads(http("GET", server.url + "/metrics/json")[1])["endpoints"]["/api/chat"]["requests"]
    assert updated == expected["endpoints"]["/api/chat"]["requests"] + 10
    _wait(lambda: _table(browser, "endpoints")["/api/chat"][0] == f"{updated:,}")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard-desktop.png"))
    phone = _chrome(tmp_path, 390, 844)
    try:
        phone.get(url)
        _wait(lambda: "/api/chat" in _table(phone, "endpoints"))
        width = phone.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390 + 1, f"the page scrolls sideways on a phone: {width}px"
        phone.save_screenshot(str(ARTIFACTS / "dashboard-phone.png"))
    finally:
        phone.quit()
    _assert_only_loopback(browser, server.url)


@pytest.fixture
def hostile_server(tmp_path: Path) -> Iterator[str]:
    """A Flask app on werkzeug's real server whose requests carry hostile label values."""
    app = make_app(tmp_path)

    @app.get("/hostile/<path:anything>")
    def hostile(anything: str) -> str:
        label_request(provider=HOSTILE, model=HOSTILE + anything)
        return "ok"

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


def test_hostile_labels_render_as_text(hostile_server: str, browser: Any) -> None:
    """Empty state before traffic; then label values with markup appear literally and nothing
    from them runs or becomes an element."""
    browser.get(hostile_server + "/metrics/dashboard")
    _wait(lambda: browser.find_element("id", "empty").is_displayed())
    assert "No traffic recorded yet" in browser.find_element("id", "empty").text
    for suffix in ("a", "b"):
        http("GET", f"{hostile_server}/hostile/{suffix}")
    _wait(lambda: HOSTILE in _table(browser, "providers"))
    assert not browser.find_element("id", "empty").is_displayed()
    assert HOSTILE + "a" in _table(browser, "models")
    assert browser.execute_script("return window.pwned === undefined")
    assert browser.execute_script("return document.querySelectorAll('main script, main img').length") == 0
    _assert_only_loopback(browser, hostile_server)


def test_keyboard_reaches_every_table(hostile_server: str, browser: Any) -> None:
    """Tab moves through the scrollable table regions (reachable without a mouse)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    http("GET", f"{hostile_server}/hostile/x")
    browser.get(hostile_server + "/metrics/dashboard")
    _wait(lambda: HOSTILE in _table(browser, "providers"))
    focused = set()
    for _ in range(12):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        focused.add(browser.execute_script("return document.activeElement.getAttribute('aria-labelledby')"))
    assert {"h-endpoints", "h-providers", "h-models"} <= focused
