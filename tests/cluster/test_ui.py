"""What a person sees after a quickstart-sized tiny sweep, in headless Chromium: the MLflow UI of
the tracking server and the report's ``report.html``.

The sweep (2 models x 2 tasks x {probe, fine-tune}, the quickstart's fine-tune steps, with its
report) logs to the session's tracking server. The browser logs in with basic auth
(``http_credentials``) and opens the experiment at the address whichmodel prints
(``workflowType=machine_learning``): the runs table, not the GenAI traces page, with every
``model@task:protocol`` run, a fine-tune's Duration above one second (its trials' compute) and
the task in the Dataset column. A second test opens ``report.html`` from the file and finds the
leaderboard, with no request to any host. Screenshots go to ``test-artifacts/`` (or
``WHICHMODEL_TEST_ARTIFACTS``). Debian's Chromium (``/usr/bin/chromium``, ``make system-deps``)
is driven by the ``playwright`` package; its own browser downloads are never used.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.tracking.ui import ui_url
from tests.cluster import services
from tests.tiny import ZOO, sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
NAMES = [f"{m}@{t}:{p}" for m in ("tiny-shapes", "tiny-random")
         for t in ("digits", "sprite_location") for p in ("probe", "finetune")]
# The quickstart's fine-tune: 100 head-only steps, then 50 steps of the whole network, two
# repetitions, all runs of a pair in one trial.
QUICKSTART_SIZED = {"head_steps: 5": "head_steps: 100",
                    "repeats: 1\n": "repeats: 2\n  trials: per_pair\n"}


@pytest.fixture(scope="module")
def ui_sweep(stack, seed, ray_session, tmp_path_factory):
    """The tiny sweep at the quickstart's fine-tune steps, logged to the tracking server, with
    its report; returns (experiment id, reports folder, stdout of ``whichmodel run``)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("ui")
    home = services.seed_home(seed / "home", root / "home")
    (root / "zoo.yaml").write_text(ZOO)
    text = sweep("ui-sweep", steps=50)
    for old, new in QUICKSTART_SIZED.items():
        text = text.replace(old, new)
    (root / "ui.yaml").write_text(text)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WHICHMODEL_HOME", str(home))
        for k, v in stack.client_env().items():
            mp.setenv(k, v)
        with contextlib.redirect_stdout(out):
            assert main(["run", str(root / "ui.yaml"), "--reports-dir", str(root / "reports")]) == 0
    rest = services.Rest(stack.tracking_uri, stack.username, stack.password)
    return rest.experiment_id("ui-sweep"), root / "reports" / "ui-sweep", out.getvalue()


def _browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def _seconds(text: str) -> float:
    """A Duration cell of the runs table (``3.5s``, ``1.2min``, ``850ms``) in seconds."""
    m = re.fullmatch(r"([\d.]+)\s*(ms|s|min|h)", text.strip())
    assert m, f"not a duration: {text!r}"
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "min": 60, "h": 3600}[m.group(2)]


def test_mlflow_ui_opens_on_the_runs_table_with_durations_and_datasets(stack, rest, ui_sweep):
    from playwright.sync_api import sync_playwright

    exp_id, _, run_out = ui_sweep
    all_runs = rest.runs("ui-sweep")
    runs = services.pair_runs(all_runs)
    assert sorted(r["info"]["run_name"] for r in runs) == sorted(NAMES)
    for run in runs:  # a run lasts as long as its trials: at least the compute they measured
        info = run["info"]
        metrics = run["metrics"]
        compute = metrics.get("time/finetune", metrics.get("time/features"))
        assert (int(info["end_time"]) - int(info["start_time"])) / 1000 >= compute > 0
    # the address whichmodel prints at the end of the run opens the model-training view
    address = ui_url(stack.tracking_uri, exp_id)
    assert address.endswith(f"/#/experiments/{exp_id}/runs?workflowType=machine_learning")
    assert address in run_out

    screenshot = services.artifacts_dir() / "mlflow-ui.png"
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            context = browser.new_context(
                http_credentials={"username": stack.username, "password": stack.password},
                viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            page.goto(address, wait_until="domcontentloaded", timeout=60_000)
            page.get_by_text(re.compile(r"\d+ matching runs")).wait_for(timeout=90_000)
            for name in NAMES:
                page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
            _tidy_for_the_screenshot(page)
            page.screenshot(path=str(screenshot))
            body = page.inner_text("body")
            headers = [h.inner_text().strip() for h in page.get_by_role("columnheader").all()]
            rows = {name: _row_cells(page, name) for name in NAMES}
            _readme_steps(page)  # README, "Comparing models in the UI": filter, then compare
        finally:
            browser.close()
    assert "matching runs" in body and "No data available" not in body  # not the traces page
    assert "Duration" in headers and "Dataset" in headers
    for name, cells in rows.items():
        task = name.split("@")[1].split(":")[0]
        # the Dataset column: the task's name and its splits' digest (16 hex digits)
        assert any(re.fullmatch(rf"{task} \([0-9a-f]{{16}}\)", c.split("\n")[0])
                   for c in cells), (name, cells)
        duration = next(_seconds(c) for c in cells if re.fullmatch(r"[\d.]+\s*(ms|s|min|h)", c))
        if name.endswith(":finetune"):
            assert duration > 1.0, (name, cells)  # the fine-tune's compute, not its logging
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000
    # the report run's description (the UI's Description) is the leaderboard in Markdown
    (report_run,) = [r for r in all_runs if r["tags"].get("protocol") == "report"]
    note = report_run["tags"]["mlflow.note.content"]
    assert note.startswith("## Which strategy finds the best model") and "\n| 1 | " in note


def test_report_html_shows_the_leaderboard_and_requests_nothing(ui_sweep):
    from playwright.sync_api import sync_playwright

    _, reports, run_out = ui_sweep
    page_file = reports / "report.html"
    assert f"open: {page_file}" in run_out  # where the terminal report says it is
    assert max(len(line) for line in run_out.splitlines() if "[whichmodel]" not in line) <= 100
    screenshot = services.artifacts_dir() / "report-html.png"
    requests: list[str] = []
    with sync_playwright() as p:
        browser = _browser(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(Path(page_file).resolve().as_uri(), wait_until="load", timeout=60_000)
            page.get_by_role("heading", name="Leaderboard").wait_for(timeout=30_000)
            table = page.locator("h2#leaderboard + p + div table")
            header = [c.inner_text().strip() for c in table.locator("th").all()]
            first = table.locator("tbody tr").first.locator("td").all_inner_texts()
            images = page.locator("img").evaluate_all(
                "imgs => imgs.map(i => [i.src.slice(0, 22), i.naturalWidth])")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert header[:4] == ["#", "strategy", "B = 1", "B = 2"]
    assert first[0] == "1" and first[1]  # the best strategy at B = 1
    assert images and all(src == "data:image/png;base64," and 0 < w <= 2000 for src, w in images)
    # the page itself, and nothing else: no host asked for anything
    assert [u for u in requests if not u.startswith("data:")] == [page_file.resolve().as_uri()]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _readme_steps(page) -> None:
    """The README's steps: a filter in the search box keeps one task's two fine-tunes; ticking
    both and *Compare* opens the comparison (screenshot ``mlflow-compare.png``)."""
    search = page.get_by_placeholder(re.compile(r"metrics\.|params\."))
    search.fill("tags.protocol = 'finetune' and tags.task = 'digits'")
    search.press("Enter")
    page.get_by_text(re.compile(r"^2 matching runs$")).wait_for(timeout=30_000)
    boxes = [b for b in page.get_by_role("checkbox").all() if b.is_visible()][1:3]  # not "all"
    assert len(boxes) == 2
    for box in boxes:
        b = box.bounding_box()
        page.mouse.click(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_text("Comparing 2 Runs").wait_for(timeout=30_000)
    page.screenshot(path=str(services.artifacts_dir() / "mlflow-compare.png"))


def _row_cells(page, name: str) -> list[str]:
    """The texts of a run's cells in the runs table. The grid draws a row in parts (the pinned
    Run Name columns, the others), each a ``row`` with the run's id as ``row-id``."""
    row = page.get_by_role("row").filter(has=page.get_by_text(name, exact=True)).first
    run_id = row.get_attribute("row-id")
    assert run_id, f"no row of {name} in the runs table"
    return [c.inner_text().strip() for part in page.locator(f'[role="row"][row-id="{run_id}"]').all()
            for c in part.get_by_role("gridcell").all()]


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
