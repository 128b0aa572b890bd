"""The sweep lease (sweeps/tracking/lease.py) on a real local MLflow store: one driver per sweep.

A second sweep driver is refused naming the holder and since when; an expired lease, or one whose
process is gone, is taken over and said so; ``--force`` takes a live one; two drivers that take
the lease at the same moment end with exactly one holder; a ``recommend`` leaves the keys an
earlier sweep runs to it and waits for them.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from sweeps.tracking import lease as lease_mod
from sweeps.tracking.lease import TAG_PREFIX, Holder, Lease, LeaseHeld, claim_of

KEYS = [("m1", "t1", "probe", "h1"), ("m2", "t1", "probe", "h1"), ("m1", "t1", "finetune", "h2")]


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory):
    """One local store for the module (creating its schema takes seconds)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('lease') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture()
def store(store_uri, request, monkeypatch):
    """An experiment of its own in the module's store; a shorter settle than the default (the
    race test below uses the default)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(lease_mod, "SETTLE_S", 0.6)
    monkeypatch.setattr(lease_mod, "MAX_WRITE_S", 0.3)
    client = MlflowClient(store_uri)
    return store_uri, client, client.create_experiment(request.node.name[:60])


def _lease(store, kind="sweep", keys=KEYS, **kw) -> Lease:
    uri, client, eid = store
    label = "sweep 'exp'" if kind == "sweep" else "'recommend-t1-probe'"
    name = client.get_experiment(eid).name
    return Lease(uri, eid, name, kind, label, keys, stream=io.StringIO(), **kw)


def _lease_tags(store) -> dict[str, dict]:
    _, client, eid = store
    return {k: json.loads(v) for k, v in client.get_experiment(eid).tags.items()
            if k.startswith(TAG_PREFIX)}


def _plant(store, **fields) -> Holder:
    """A lease tag as another driver would have written it."""
    _, client, eid = store
    now = time.time()
    values = dict(token="other", kind="sweep", label="sweep 'exp'", owner="ann", host="node-7",
                  pid=4242, since=now - 600, expires=now + 600, claim=claim_of(KEYS),
                  started=None)
    values.update(fields)
    holder = Holder(TAG_PREFIX + values["token"], **values)
    client.set_experiment_tag(eid, holder.tag, holder.value())
    return holder


def test_a_second_sweep_driver_is_refused_naming_the_holder_and_since_when(store):
    first = _lease(store)
    first.acquire()
    try:
        second = _lease(store)
        with pytest.raises(LeaseHeld) as err:
            second.acquire()
        message = str(err.value)
        assert "\n" not in message
        assert "sweep 'exp' is already running" in message
        assert f"{first.mine.owner}@{socket.gethostname()} (pid {os.getpid()})" in message
        assert time.strftime("since %Y-%m-%d", time.localtime(first.mine.since)) in message
        assert "--force" in message
        assert list(_lease_tags(store)) == [first.mine.tag]  # the refused one left nothing
    finally:
        first.release()
    assert _lease_tags(store) == {}


def test_an_expired_lease_is_taken_over_and_said_so(store):
    old = _plant(store, expires=time.time() - 75)
    taker = _lease(store)
    taker.acquire()
    try:
        said = taker.stream.getvalue()
        assert "took over the lease of sweep 'exp' by ann@node-7 (pid 4242)" in said
        assert "expired 1m1" in said  # 75 s ago, give or take the settle
        assert list(_lease_tags(store)) == [taker.mine.tag] and old.tag not in _lease_tags(store)
    finally:
        taker.release()


def test_a_lease_whose_process_is_gone_is_taken_over_before_it_expires(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _plant(store, host=socket.gethostname(), pid=dead.pid)
    taker = _lease(store)
    taker.acquire()
    try:
        assert f"its process {dead.pid} on {socket.gethostname()} is gone" in taker.stream.getvalue()
    finally:
        taker.release()


def test_force_takes_a_live_lease_and_says_whose(store):
    _plant(store, host=socket.gethostname(), pid=os.getpid())  # this very process: alive
    with pytest.raises(LeaseHeld):
        _lease(store).acquire()
    forced = _lease(store, force=True)
    forced.acquire()
    try:
        assert "--force: took the lease of sweep 'exp' by ann@" in forced.stream.getvalue()
        assert list(_lease_tags(store)) == [forced.mine.tag]
    finally:
        forced.release()


def test_leases_on_other_keys_do_not_conflict(store):
    _plant(store, claim=claim_of([("m9", "t9", "probe", "h1")]))
    mine = _lease(store)
    assert mine.acquire() == set()
    mine.release()
    assert len(_lease_tags(store)) == 1  # the other, untouched


def test_two_drivers_taking_the_lease_at_once_leave_exactly_one_holder(store, monkeypatch):
    """The default settle: both write, both wait, both read both; the earlier one wins."""
    monkeypatch.setattr(lease_mod, "SETTLE_S", 2.0)
    monkeypatch.setattr(lease_mod, "MAX_WRITE_S", 1.0)
    drivers = [_lease(store) for _ in range(2)]
    start = threading.Barrier(2)
    outcomes: dict[int, object] = {}

    def take(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = drivers[i].acquire()
        except LeaseHeld as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        refused = [i for i, o in outcomes.items() if isinstance(o, LeaseHeld)]
        assert len(outcomes) == 2 and len(refused) == 1, outcomes
        winner = drivers[1 - refused[0]]
        assert list(_lease_tags(store)) == [winner.mine.tag]
    finally:
        for d in drivers:
            d.release()


def test_a_recommend_waits_for_the_keys_an_earlier_sweep_runs(store, tmp_path, monkeypatch):
    from sweeps.driver import wait_for_keys
    from sweeps.tracking.client import Tracker

    monkeypatch.setattr("sweeps.driver.POLL_S", 0.2)
    sweep = _lease(store)
    sweep.acquire()
    wanted = [KEYS[0], ("m3", "t1", "probe", "h1")]
    recommend = _lease(store, kind="recommend", keys=wanted)
    assert recommend.acquire() == {KEYS[0]}  # not refused: the sweep's key is waited for
    uri, client, eid = store
    tracker = Tracker(uri, client.get_experiment(eid).name, create=False)

    def sweep_finishes_then_ends() -> None:
        time.sleep(0.5)
        tracker.log_pair("m1", "t1", "probe", "h1", {}, {}, {"proxy/knn": 0.5})
        sweep.release()

    later = threading.Thread(target=sweep_finishes_then_ends)
    later.start()
    try:
        left = wait_for_keys(tracker, recommend, [k[:3] for k in wanted], {"probe": "h1"},
                             io.StringIO())
    finally:
        later.join()
        recommend.release()
    assert left == [("m3", "t1", "probe")]  # finished by the sweep: not run again


def test_the_lease_is_renewed_while_the_driver_runs(store, monkeypatch):
    monkeypatch.setattr(lease_mod, "RENEW_S", 0.2)
    held = _lease(store)
    held.acquire()
    try:
        first = _lease_tags(store)[held.mine.tag]["expires"]
        time.sleep(1.0)
        assert _lease_tags(store)[held.mine.tag]["expires"] > first
    finally:
        held.release()


def test_claims_are_products_of_names_and_fall_back_to_every_key():
    assert claim_of(KEYS) == [[["m1"], ["t1"], ["finetune@h2"]], [["m1", "m2"], ["t1"], ["probe@h1"]]]
    ragged = [("a", "t1", "probe", "h"), ("b", "t2", "probe", "h")]
    assert claim_of(ragged) == [[["a"], ["t1"], ["probe@h"]], [["b"], ["t2"], ["probe@h"]]]
    huge = [(f"model-{i:04d}-" + "x" * 60, f"task-{i}", "probe", "h") for i in range(400)]
    assert claim_of(huge) == "*"
    holder = Holder("t", "t", "sweep", "l", "o", "h", 1, 0.0, 1.0, claim_of(ragged))
    assert holder.covers([("a", "t1", "probe", "h"), ("a", "t2", "probe", "h")]) == {
        ("a", "t1", "probe", "h")}


def test_run_stops_at_a_live_drivers_lease_before_it_writes_anything(tmp_path, monkeypatch,
                                                                       capsys):
    """``whichmodel run`` while another live driver holds the sweep: one line, exit 2, and
    nothing written -- no task cache, no run, no tag, no file in the home folder."""
    from mlflow.tracking import MlflowClient

    from sweeps.cli import main
    from sweeps.plan import plan_sweep
    from sweeps.trials import build_model
    from sweeps.zoo_config import load_zoo_config

    (tmp_path / "zoo.yaml").write_text(
        "models:\n  - {name: control, arch: cnn, arch_kwargs: {width: 4}, objective: none}\n")
    (tmp_path / "s.yaml").write_text("name: held\nmodels: [control]\ntasks: [digits]\n")
    home = tmp_path / "home"
    build_model(load_zoo_config(tmp_path / "zoo.yaml"), "control", home / "zoo", home / "data")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(uri)
    eid = client.create_experiment("held")
    cfg = plan_sweep(tmp_path / "s.yaml").cfg
    keys = [("control", "digits", p, cfg.protocol_hash(p)) for p in ("probe", "finetune")]
    holder = _plant((uri, client, eid), host=socket.gethostname(), pid=os.getpid(),
                    label="sweep 'held'", owner="ann", claim=claim_of(keys))
    monkeypatch.setenv("WHICHMODEL_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = sorted((p, p.stat().st_size) for p in home.rglob("*") if p.name != "mlflow.db")
    capsys.readouterr()
    assert main(["run", str(tmp_path / "s.yaml"), "--reports-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"whichmodel: error: sweep 'held' is already running: ann@{socket.gethostname()} "
                   f"(pid {os.getpid()}) has held its lease since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.since))} "
                   f"(experiment 'held' at {uri}, renewed until "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.expires))}); "
                   "wait for it to finish, or pass --force if you know that driver is gone")
    assert sorted((p, p.stat().st_size) for p in home.rglob("*") if p.name != "mlflow.db") == before
    assert not (home / "data" / "tasks").exists() and not (tmp_path / "r").exists()
    assert client.search_runs([eid]) == [] and list(_lease_tags((uri, client, eid))) == [holder.tag]
