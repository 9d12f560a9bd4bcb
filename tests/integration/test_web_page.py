"""The worker's page in a real browser: Debian's headless Chromium (started here, stopped by
its PID) driven by Playwright over the DevTools protocol, against the shared worker whose
history has a drift and a rollback. Saves ``docs/web-page.png`` for the README.

Skips with the reason where Chromium or Playwright is missing, except under CI=true, where
that fails (``.ci/run`` installs Debian's ``chromium``)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import pid_alive
from tests.integration.conftest import WebWorker

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
#: the README's screenshot (docs/web-page.png) is refreshed only when asked, with
#: RIVERBED_SCREENSHOT=docs/web-page.png, so a test run leaves the working tree clean
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture
def chromium() -> Iterator[str]:
    """A headless Chromium; yields its DevTools websocket URL; stopped by PID."""
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="riverbed-chromium-")
    process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        deadline, url = time.monotonic() + 30, None
        while url is None:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            line = process.stderr.readline().decode(errors="replace")
            assert line or process.poll() is None, f"chromium exited: {process.returncode}"
            found = re.search(r"(ws://127\.0\.0\.1:\d+/\S+)", line)
            url = found.group(1) if found else None
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert not pid_alive(process.pid)
        shutil.rmtree(profile, ignore_errors=True)


def test_the_page_draws_the_model_its_markers_and_its_history(
        web_worker: WebWorker, chromium: str, tmp_path: Path) -> None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.connect_over_cdp(chromium)
        context = browser.new_context(viewport={"width": 1280, "height": 1100})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(web_worker.base + "/")
        # two refreshes: the second one updated what the first one drew
        page.wait_for_function("() => Number(document.body.dataset.refreshed || 0) >= 2",
                               timeout=30_000)
        section = page.locator("section.model[data-model='agrawal-lr']")
        assert section.locator("h2 .name").inner_text() == "agrawal-lr"
        assert "lineage 1" in section.locator("h2 .facts").inner_text()
        kinds = section.locator("table.history tr.entry").evaluate_all(
            "rows => rows.map(r => r.dataset.kind)")
        assert {"rollback", "drift", "snapshot", "learned", "claimed"} <= set(kinds)
        assert section.locator("tr.kind-rollback td").last.inner_text().endswith(
            "drifted: back to before the change")
        assert section.locator("table.versions tr.version").count() == 2
        markers = section.locator("ol.markers li").evaluate_all(
            "items => items.map(i => i.dataset.kind)")
        assert markers.count("rollback") == 1 and markers.count("drift") >= 1
        assert int(section.locator(".count-rollback").inner_text()) == 1
        chart = section.locator(".chart")
        assert int(chart.get_attribute("data-points") or 0) >= 5
        # drawn: the canvas has the metric line and the rollback's red marker
        drawn = chart.locator("canvas").evaluate("""c => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let ink = 0, red = 0, blue = 0;
            for (let i = 0; i < d.length; i += 4) {
              if (d[i + 3] > 0) ink++;
              if (d[i] > 180 && d[i + 1] < 80 && d[i + 2] < 80 && d[i + 3] > 200) red++;
              if (d[i] < 60 && d[i + 1] > 80 && d[i + 1] < 130 && d[i + 2] > 170) blue++;
            }
            return {ink, red, blue};
        }""")
        assert drawn["ink"] > 1000 and drawn["red"] > 20 and drawn["blue"] > 20, drawn
        assert float(page.locator("#rate").inner_text()) >= 0
        assert page.locator("#status").inner_text() == ""
        shot = Path(os.environ.get("RIVERBED_SCREENSHOT") or tmp_path / "web-page.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
        assert errors == []
        context.close()
        browser.close()
    assert shot.stat().st_size > 10_000
