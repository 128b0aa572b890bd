"""The MLflow UI of the tracking server, in headless Chromium, after a tiny sweep logged to it.

The browser logs in with basic auth (``http_credentials``), opens the experiment's runs page,
waits for the runs table and finds every ``model@task:protocol`` run of the sweep in it. A
screenshot is left at ``test-artifacts/mlflow-ui.png`` (or under ``WHICHMODEL_TEST_ARTIFACTS``).
Debian's Chromium (``/usr/bin/chromium``, ``make system-deps``) is driven by the ``playwright``
package; its own browser downloads are never used.
"""

from __future__ import annotations

import re

import pytest

from sweeps.cli import main
from tests.cluster import services
from tests.tiny import sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
NAMES = [f"{m}@{t}:{p}" for m in ("tiny-shapes", "tiny-random")
         for t in ("digits", "sprite_location") for p in ("probe", "finetune")]


def test_mlflow_ui_lists_the_sweeps_runs(stack, rest, wm_home, monkeypatch, ray_session):
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("WHICHMODEL_HOME", str(wm_home))
    for k, v in stack.client_env().items():
        monkeypatch.setenv(k, v)
    config = wm_home.parent / "ui.yaml"
    config.write_text(sweep("ui-sweep"))
    assert main(["run", str(config), "--no-report"]) == 0
    exp_id = rest.experiment_id("ui-sweep")
    assert sorted(r["info"]["run_name"] for r in services.pair_runs(rest.runs("ui-sweep"))) == \
        sorted(NAMES)

    screenshot = services.artifacts_dir() / "mlflow-ui.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                http_credentials={"username": stack.username, "password": stack.password},
                viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            page.goto(f"{stack.tracking_uri}/#/experiments/{exp_id}/runs",
                      wait_until="domcontentloaded", timeout=60_000)
            page.get_by_text(re.compile(r"\d+ matching runs")).wait_for(timeout=90_000)
            for name in NAMES:
                page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
            _tidy_for_the_screenshot(page)
            page.screenshot(path=str(screenshot))
            table = page.inner_text("body")
        finally:
            browser.close()
    assert all(name in table for name in NAMES)
    assert "ui-sweep" in table
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000


def _tidy_for_the_screenshot(page) -> None:
    """Close the assistant's side panel and widen the Run Name column (names show in full)."""
    close = page.get_by_role("button", name=re.compile("close", re.I))
    if close.count():
        close.first.click()
    header = page.get_by_role("columnheader", name=re.compile("Run Name"))
    box = header.first.bounding_box() if header.count() else None
    if box:  # drag the header's right edge
        x, y = box["x"] + box["width"] - 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 180, y, steps=10)
        page.mouse.up()
