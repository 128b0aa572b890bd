"""Trials that lose their worker run again; trials whose code fails do not; the budget is
``resources.max_failures + 1`` attempts.

The trials really kill their Ray worker process (``os._exit``), the way a node dying under them
does. Tune retries such a trial by itself; when it gives up early (a dead node's actor can fail
twice at once, Ray 2.60), ``run_jobs`` runs the trial again in a retry round: the tests stand in
for that early give-up by granting one attempt more than Tune's budget.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sweeps import tune_runner
from sweeps.plan import Job
from sweeps.tune_runner import TrialResources, lost_its_worker, run_jobs


class Sink:
    def __init__(self):
        self.results, self.errors = [], []

    def on_result(self, job, metrics):
        self.results.append((job, metrics))

    def on_error(self, job, error):
        self.errors.append(job)


def job(name: str, deaths: int, raises: bool = False) -> Job:
    """A trial named ``name`` (the job's model) that dies ``deaths`` times (its task says how)."""
    return Job("x", name, f"deaths{deaths}" + ("-raise" if raises else ""))


def die_until(job, settings, report):
    """Kills its own worker process on the first ``deaths`` attempts, then finishes."""
    counter = Path(settings) / f"attempts-{job.model}"
    attempt = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempt))
    if job.task.endswith("-raise"):
        raise ValueError("a bug in the trial's own code")
    if attempt <= int(job.task.removeprefix("deaths").removesuffix("-raise")):
        os._exit(1)
    return {"attempt": attempt}


@pytest.fixture()
def by_value():
    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _grant_first_round(monkeypatch, extra: int) -> None:
    """``extra`` attempts beyond Tune's budget for the first experiment's failed trials."""
    real = tune_runner._Forward._attempts_left
    monkeypatch.setattr(tune_runner._Forward, "_attempts_left",
                        lambda self, trial: real(self, trial) + (extra if self.attempts is None
                                                                 else 0))


def _run(tmp_path, jobs, max_failures):
    sink = Sink()
    finished = run_jobs(die_until, jobs, str(tmp_path), name="retries",
                        storage_path=tmp_path / "tune", sink=sink,
                        resources=TrialResources({"x": (1, 0)}), max_failures=max_failures,
                        max_concurrent_trials=1)
    return sink, finished


def test_lost_worker_errors_are_told_apart_from_the_trials_own_errors():
    from ray.exceptions import ActorDiedError, ActorUnavailableError, NodeDiedError, RayTaskError

    assert lost_its_worker(ActorUnavailableError("socket closed", None))
    assert lost_its_worker(ActorDiedError())
    assert lost_its_worker(NodeDiedError("node 127.0.0.3 died"))
    assert not lost_its_worker(ValueError("bad input"))
    assert not lost_its_worker(None)
    own = RayTaskError("train", "Traceback ...", ValueError("bad input"))
    assert not lost_its_worker(own)
    assert lost_its_worker(RayTaskError("train", "Traceback ...", ActorDiedError()))


def test_trial_that_lost_its_worker_after_tune_gave_up_runs_again_in_a_retry_round(
        ray_session, by_value, tmp_path, monkeypatch, capfd):
    # Tune's budget is spent (max_failures=0); one attempt more stands in for Tune giving up early.
    _grant_first_round(monkeypatch, 1)
    jobs = [job("dies-once", 1), job("healthy", 0)]
    sink, finished = _run(tmp_path, jobs, max_failures=0)
    assert sink.errors == []
    assert sorted(j.model for j, _ in sink.results) == ["dies-once", "healthy"]
    assert {j.model: m["attempt"] for j, m in finished} == {"dies-once": 2, "healthy": 1}
    assert (tmp_path / "attempts-dies-once").read_text() == "2"
    assert sorted(p.name for p in (tmp_path / "tune").iterdir()) == ["retries", "retries-retry1"]
    err = capfd.readouterr().err
    assert "x dies-once@deaths1 lost its worker (ActorDiedError)" in err
    assert "running 1 trial(s) that lost their worker again (retries-retry1)" in err


def test_retry_rounds_stop_when_the_attempts_are_spent(ray_session, by_value, tmp_path,
                                                       monkeypatch):
    _grant_first_round(monkeypatch, 2)
    sink, finished = _run(tmp_path, [job("always", 99)], max_failures=0)
    # Three attempts in all: the first experiment's and two retry rounds, each dying.
    assert finished == [] and [j.model for j in sink.errors] == ["always"]
    assert (tmp_path / "attempts-always").read_text() == "3"
    assert sorted(p.name for p in (tmp_path / "tune").iterdir()) == [
        "retries", "retries-retry1", "retries-retry2"]


def test_tune_retries_within_max_failures_and_no_round_follows_a_spent_budget(
        ray_session, by_value, tmp_path):
    jobs = [job("dies-once", 1), job("dies-twice", 2)]
    sink, finished = _run(tmp_path, jobs, max_failures=1)
    assert [j.model for j, _ in finished] == ["dies-once"]  # Tune's own retry
    assert [j.model for j in sink.errors] == ["dies-twice"]  # 2 attempts of 2: reported
    assert (tmp_path / "attempts-dies-twice").read_text() == "2"
    assert [p.name for p in (tmp_path / "tune").iterdir()] == ["retries"]


def test_a_trial_whose_own_code_fails_is_reported_not_run_again(ray_session, by_value, tmp_path):
    sink, finished = _run(tmp_path, [job("buggy", 0, raises=True)], max_failures=0)
    assert finished == [] and [j.model for j in sink.errors] == ["buggy"]
    assert (tmp_path / "attempts-buggy").read_text() == "1"
    assert [p.name for p in (tmp_path / "tune").iterdir()] == ["retries"]
