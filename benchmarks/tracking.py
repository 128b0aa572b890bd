"""The tracking side at the study's size, against the project's own server stack.

    python -m benchmarks.tracking [--quick | --tiny] [--workers N] [--no-ui] [--keep]

Starts ``mlflow_server.local`` (PostgreSQL, moto's S3, MLflow with basic auth, on loopback; its
server workers as ``MLFLOW_SERVER_WORKERS=auto`` gives this host unless ``--workers``), then:

1. logs the study (:mod:`benchmarks.tracking_study`: 874 probe + 874 fine-tune pairs of
   ``vtab1k.yaml``'s protocols; ``--quick``: the first 2 of its 19 tasks, 92 + 92) through the
   driver's own path: each synthesised trial result goes to :class:`PairRecorder.on_result
   <sweeps.tracking.recorder.PairRecorder>` as Tune's callback hands it over, the writer thread
   logs it. ``tracking_log_s_per_pair``: the writer's median seconds per fine-tune pair (create,
   log, upload, finish); ``tracking_requests_per_pair``: HTTP requests of the whole logging
   phase over the pairs logged; ``tracking_driver_s_per_pair``: how long the callback held
   Tune's loop per pair (aggregation, the predictions file, the journal);
2. ``tracking_skip_check_s``: what ``whichmodel run`` reads before its first trial (a new
   ``Tracker`` and its finished keys), in this process;
3. ``tracking_report_s`` and ``tracking_report_again_s``: ``whichmodel report --experiment`` as a
   command, cold (an empty home, not the driver's, which keeps the predictions it logged: every
   predictions artifact downloaded) and again (the same runs: the report is reused), and
   ``tracking_report_stderr_lines`` of the cold one;
4. ``tracking_ui_table_s``: headless Chromium (``/usr/bin/chromium`` through playwright, as
   ``tests/cluster/test_ui.py``) from opening the experiment's address to its first pair run in
   the runs table.

Prints one JSON line last. Measured figures depend on the machine and its load (see README,
"Benchmarks").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness import log
from benchmarks.tracking_study import study_jobs, study_plan, trial_result

EXPERIMENT = "tracking-bench"
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class RequestCounter:
    """HTTP requests this process sends (every ``requests`` adapter), by method and endpoint."""

    def __init__(self):
        self.by_endpoint: Counter = Counter()

    def __enter__(self):
        from requests.adapters import HTTPAdapter

        self._original = HTTPAdapter.send
        counter = self.by_endpoint
        original = self._original

        def send(adapter, request, **kwargs):
            path = re.sub(r"/[0-9a-f]{32}/.*", "/RUN/...", request.path_url.split("?")[0])
            counter[f"{request.method} {path}"] += 1
            return original(adapter, request, **kwargs)

        HTTPAdapter.send = send
        return self

    def __exit__(self, *exc):
        from requests.adapters import HTTPAdapter

        HTTPAdapter.send = self._original

    @property
    def total(self) -> int:
        return sum(self.by_endpoint.values())


def log_study(plan, metas, uri: str, home: Path) -> dict[str, Any]:
    from sweeps.tracking.client import Tracker
    from sweeps.tracking.recorder import PairRecorder

    jobs = study_jobs(plan)
    hashes = {p: plan.cfg.protocol_hash(p) for p in plan.protocols}
    tracker = Tracker(uri, plan.cfg.experiment, spool_dir=home / "spool")
    tracker.keys_by_status(hashes)  # the skip check before the sweep
    recorder = PairRecorder(plan, metas, uri, None, dict(Counter(j.kind for j in jobs)),
                            spool_dir=home / "spool")
    recorder.use(tracker)
    held = 0.0
    with RequestCounter() as requests:
        start = time.perf_counter()
        for job in jobs:
            metrics = trial_result(job, plan)
            t0 = time.perf_counter()
            recorder.on_result(job, metrics)
            held += time.perf_counter() - t0
        recorder.flush()
        wall = time.perf_counter() - start
    pairs = len(plan.keys())
    if recorder.failures or recorder.logged != pairs:
        raise RuntimeError(f"logged {recorder.logged} of {pairs} pairs: {recorder.failures[:3]}")
    seconds = recorder.writer.seconds
    finetune = [s for proto, s in seconds if proto == "finetune"]
    probe = [s for proto, s in seconds if proto == "probe"]
    log(f"requests while logging: {dict(requests.by_endpoint.most_common())}")
    return {"tracking_pairs": pairs,
            "tracking_log_s_per_pair": statistics.median(finetune),
            "tracking_log_s_per_probe_pair": statistics.median(probe),
            "tracking_log_wall_s": wall,
            "tracking_requests_per_pair": requests.total / pairs,
            "tracking_driver_s_per_pair": held / pairs,
            "tracking_driver_waited_s": recorder.writer.waited_s,
            "experiment_id": tracker.experiment_id}


def skip_check(plan, uri: str) -> dict[str, Any]:
    from sweeps.tracking.client import Tracker

    hashes = {p: plan.cfg.protocol_hash(p) for p in plan.protocols}
    start = time.perf_counter()
    tracker = Tracker(uri, plan.cfg.experiment)
    finished, _ = tracker.keys_by_status(hashes)
    took = time.perf_counter() - start
    if len(finished) != len(plan.keys()):
        raise RuntimeError(f"the skip check found {len(finished)} of {len(plan.keys())} keys")
    return {"tracking_skip_check_s": took}


def report(home: Path, reports: Path, env: dict[str, str]) -> tuple[float, list[str]]:
    """``whichmodel report --experiment`` as a command: (seconds, its stderr lines)."""
    cmd = [sys.executable, "-m", "sweeps.cli", "--home", str(home), "report", "--experiment",
           EXPERIMENT, "--reports-dir", str(reports)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"report exited {done.returncode}:\n{done.stderr[-3000:]}")
    return took, done.stderr.splitlines()


def reports(home: Path, root: Path, env: dict[str, str]) -> dict[str, Any]:
    """The report from an empty home (the driver's home holds the predictions it logged), then
    again from the same home."""
    cold, lines = report(home, root / "reports", env)
    log(f"report (cold) {cold:.1f}s, stderr:\n" + "\n".join(lines[-20:]))
    again, again_lines = report(home, root / "reports", env)
    log(f"report (again) {again:.1f}s, stderr:\n" + "\n".join(again_lines[-20:]))
    return {"tracking_report_s": cold, "tracking_report_again_s": again,
            "tracking_report_stderr_lines": len(lines),
            "tracking_report_again_stderr_lines": len(again_lines)}


def ui_time(stack, experiment_id: str) -> dict[str, Any]:
    """Seconds from opening the experiment's runs table to its first pair run's row."""
    from playwright.sync_api import sync_playwright

    from sweeps.tracking.ui import ui_url

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                http_credentials={"username": stack.username, "password": stack.password},
                viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            start = time.perf_counter()
            page.goto(ui_url(stack.tracking_uri, experiment_id), wait_until="domcontentloaded",
                      timeout=60_000)
            page.get_by_text(re.compile(r"^[^@\s]+@[^:\s]+:(probe|finetune)$")).first.wait_for(
                timeout=120_000)
            took = time.perf_counter() - start
        finally:
            browser.close()
    return {"tracking_ui_table_s": took}


def main(argv: list[str] | None = None) -> int:
    from mlflow_server.local import local_stack
    from mlflow_server.settings import server_workers

    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracking")
    parser.add_argument("--quick", action="store_true", help="a tenth: 2 of the 19 tasks")
    parser.add_argument("--tiny", action="store_true",
                        help="4 models x 2 tasks: the code paths only (the test suite runs it)")
    parser.add_argument("--workers", type=int, help="MLflow server workers (default: auto)")
    parser.add_argument("--no-ui", action="store_true", help="skip the browser")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's folder")
    args = parser.parse_args(argv)
    workers = args.workers or server_workers("auto")
    root = Path(tempfile.mkdtemp(prefix="wm-tracking-", dir="/tmp"))
    root.chmod(0o711)  # PostgreSQL runs as its own user when we are root
    home = root / "home"
    out: dict[str, Any] = {"tracking_quick": args.quick, "tracking_tiny": args.tiny,
                           "tracking_server_workers": workers,
                           "loadavg": [round(v, 2) for v in os.getloadavg()]}
    saved = dict(os.environ)
    try:
        with local_stack(root / "stack", workers=workers) as stack:
            env = {**os.environ, **stack.client_env(), "WHICHMODEL_HOME": str(home),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                              os.environ.get("PYTHONPATH")]))}
            os.environ.update(stack.client_env())
            os.environ["WHICHMODEL_HOME"] = str(home)
            plan, metas = study_plan(EXPERIMENT, 2 if args.tiny or args.quick else None,
                                     n_models=4 if args.tiny else None)
            log(f"logging {len(plan.keys())} pairs ({len(plan.models)} models x "
                f"{len(plan.tasks)} tasks x {len(plan.protocols)} protocols) to "
                f"{stack.tracking_uri} ({workers} server workers)")
            out.update(log_study(plan, metas, stack.tracking_uri, home))
            out.update(skip_check(plan, stack.tracking_uri))
            out.update(reports(root / "report-home", root, env))
            if not args.no_ui:
                out.update(ui_time(stack, out["experiment_id"]))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {root}")
    out.pop("experiment_id", None)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
