"""The MLflow server goes down for 60 s in the middle of a sweep: nothing lost, nothing doubled.

A tiny sweep (2 models x 2 tasks x {probe, finetune}: 4 probe and 8 fine-tune trials) runs as
``python -m sweeps.cli run`` against the session's tracking stack. Once its first pair is logged,
the MLflow server (not PostgreSQL, not S3) is stopped, kept down for 60 s and started again on the
same port. The driver must spool the pairs that finish meanwhile, log them once the server answers
again, and finish with exit 0 and exactly one FINISHED run per (model, task, protocol) key.

Timing (2-core machine, measured): the first pair is logged 25-45 s after the driver starts
(Ray, trial workers, the probes). With ``STEPS`` = 1000 a fine-tune trial takes ~5-20 s depending
on load, so 4-6 of the 7 pairs still to come finish while the server is down (the first failed log
is retried for ~15 s, later ones go straight to the spool). Depending on load the trials end
during the outage (the driver's end-of-sweep drain, asking at least every 10 s for up to ~60 s,
logs the spool once the server is back) or after it (the next finished pair drains the spool
first; ``test_spool.py`` checks that path deterministically). The test takes 1m50s-2m30s.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from tests.cluster import services
from tests.tiny import sweep

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

OUTAGE_S = 60.0
STEPS = 1000  # fine-tune steps per trial: long enough for pairs to finish during the outage
KEYS = {f"{m}|{t}|{p}" for m in ("tiny-shapes", "tiny-random")
        for t in ("digits", "sprite_location") for p in ("probe", "finetune")}


def test_mlflow_down_60s_mid_sweep_loses_no_result_and_duplicates_none(
        mlflow_up, rest, wm_home, tmp_path, short_tmp):
    stack = mlflow_up
    config = tmp_path / "outage.yaml"
    config.write_text(sweep("outage", tasks="[digits, sprite_location]", steps=STEPS))
    log = tmp_path / "sweep.log"
    ray_dir = short_tmp("o")  # short: Ray's socket paths stay < 108 chars
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(stack.client_env())
    spool = wm_home / "spool" / "outage"
    timeline: dict[str, float] = {}
    t0 = time.monotonic()
    proc = services.cli(wm_home, ray_dir, "run", str(config), "--no-report", env=env, log=log)
    try:
        def first_pair_logged():
            if proc.poll() is not None:
                raise AssertionError(f"the sweep ended early:\n{log.read_text()[-3000:]}")
            return any(r["info"]["status"] == "FINISHED"
                       for r in services.pair_runs(rest.runs("outage")))

        services.wait_for(first_pair_logged, timeout=240, what="the first logged pair")
        timeline["first pair logged"] = time.monotonic() - t0
        stack.stop_mlflow()
        down = time.monotonic()
        timeline["server stopped"] = down - t0
        assert proc.poll() is None, "the sweep must still be running when the server goes"
        most_spooled = 0
        while time.monotonic() - down < OUTAGE_S:
            most_spooled = max(most_spooled, len(list(spool.glob("*.json"))))
            time.sleep(0.5)
        timeline["sweep running at restart"] = float(proc.poll() is None)
        stack.start_mlflow()
        timeline["server back"] = time.monotonic() - t0
        rc = proc.wait(timeout=300)
        timeline["sweep done"] = time.monotonic() - t0
    finally:
        services.stop_cli(proc)
    out = log.read_text()
    (tmp_path / "timeline.txt").write_text(repr(timeline))
    assert rc == 0, f"{timeline}\n{out[-4000:]}"
    assert most_spooled >= 1, f"no pair finished during the outage: {timeline}\n{out[-3000:]}"
    assert "kept in the spool" in out and "spooled pair result(s) logged" in out, out[-3000:]
    assert not list(spool.glob("*.json")), "the spool must be empty at the end"

    runs = rest.runs("outage")
    pairs = services.pair_runs(runs)
    counts = Counter(r["tags"]["pair_key"] for r in pairs)
    assert set(counts) == KEYS and set(counts.values()) == {1}, counts  # none lost, none doubled
    assert all(r["info"]["status"] == "FINISHED" for r in runs), [
        (r["info"]["run_name"], r["info"]["status"]) for r in runs
        if r["info"]["status"] != "FINISHED"]
    for parent in pairs:
        if parent["tags"]["protocol"] == "finetune":
            assert 0 <= parent["metrics"]["test/acc"] <= 1
            assert {f"lr_{lr}/rep0/curve/train_loss" for lr in ("0.001", "0.01")} <= set(
                parent["metrics"])  # every run's curve, spooled or not
        else:
            assert "proxy/knn" in parent["metrics"]
    assert len(runs) == len(pairs)  # and no stray runs
    print(f"outage timeline (s): {timeline}; most pairs waiting in the spool: {most_spooled}")
