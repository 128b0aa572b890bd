"""The sweep driver: plan, run on Ray Tune, log to MLflow; resume an interrupted sweep.

    whichmodel run sweeps/configs/quickstart.yaml
    whichmodel resume quickstart

``run_sweep`` reads top to bottom: check everything before any trial (:func:`sweeps.plan.check_plan`),
skip the (model, task, protocol) keys MLflow has finished, expand the rest into trials
(:func:`sweeps.plan.expand_jobs`), run them on Tune (:mod:`sweeps.tune_runner`) with the trial
bodies of :mod:`sweeps.trials`, and log each pair as its trials come in
(:class:`sweeps.tracking.recorder.PairRecorder`). ``resume_sweep`` restores the latest Tune experiment of a
sweep instead (from this home folder, or from shared storage on a new head node).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.config import SweepConfig
from sweeps.paths import Paths
from sweeps.plan import Plan, check_plan, check_trials, expand_jobs, pair_key, plan_sweep
from sweeps.tracking.client import Tracker, preflight
from sweeps.tracking.lease import POLL_S, Lease, refuse_if_held
from sweeps.tracking.recorder import PairRecorder, artifact_root
from sweeps.tracking.spool import Spool
from sweeps.trials import TrialSettings, run_trial
from whichmodel.errors import WhichModelError
from whichmodel.names import check_name, within
from whichmodel.uri import redact_uri


@dataclass
class Outcome:
    experiment: str
    pairs_total: int
    pairs_skipped: int
    pairs_logged: int = 0
    failures: list[str] = field(default_factory=list)
    experiment_path: str = ""
    tracking_uri: str = ""
    experiment_id: str = ""  # the MLflow experiment's id (the UI's address)
    # seconds from the sweep's start until its last probe and its last fine-tune were in
    stage_s: dict[str, float] = field(default_factory=dict)
    tracker: Any = field(default=None, repr=False)  # the Tracker that read and wrote the pairs


def run_sweep(plan: Plan, paths: Paths, tracking_uri: str | None = None,
              stream=None, *, keys: list[tuple[str, str, str]] | None = None,
              label: str | None = None, force: bool = False) -> Outcome:
    """Run the plan's (model, task, protocol) keys that MLflow has not finished.

    ``keys``: only these keys of the plan (``whichmodel recommend``: the pool's probes, then the
    picks' fine-tunes). ``label``: the Tune experiment's name prefix for such a partial run,
    which writes no sweep state (``resume`` continues whole sweeps only). Before the first
    trial the driver takes the sweep's lease (:mod:`sweeps.tracking.lease`): another live
    driver of the same keys stops this one with :class:`~sweeps.tracking.lease.LeaseHeld`
    (``force``: take it anyway); keys that a ``recommend`` (or, for a ``recommend``, a sweep)
    started earlier runs are waited for, not trained twice. The pair runs are read once
    (ids, status and tags: no metric travels) unless a spool is replayed or keys are waited
    for; the outcome's tracker carries that read to the search and the report."""
    stream = stream or sys.stderr
    cfg = plan.cfg
    # Every model opens and every task's data is there, before anything runs or is written.
    metas = check_plan(plan, paths)
    uri = paths.tracking_uri(tracking_uri)
    hashes = {p: cfg.protocol_hash(p) for p in plan.protocols}
    wanted = keys if keys is not None else [(m, t, p) for p in plan.protocols
                                            for m in plan.models for t in plan.tasks]
    preflight(uri)  # a server that cannot be used: one line, before anything else
    if label is None and not force:  # another live driver of this sweep: stop, writing nothing
        refuse_if_held(uri, cfg.experiment, f"sweep {cfg.name!r}",
                       [(*k, hashes[k[2]]) for k in wanted])
    settings = trial_settings(plan, paths)
    from lightning_modules.task_data import DatasetError

    for task in plan.tasks:  # build (or read) each task's cache once here, not in every trial
        try:
            settings.load_task(task)
        except OSError as exc:  # the data's own problems are DatasetErrors that name the task
            raise DatasetError(f"task {task!r}: {exc}") from None
    tracker = open_tracker(uri, cfg.experiment, paths)  # nothing replayed before the lease
    finished, _ = tracker.keys_by_status(hashes)  # ids, status, tags: no metric travels
    todo = [k for k in wanted if pair_key(*k) not in finished]
    spool = Spool(paths.home / "spool", cfg.experiment)
    outcome = Outcome(cfg.experiment, len(wanted), len(wanted) - len(todo), tracking_uri=uri,
                      experiment_id=tracker.experiment_id, tracker=tracker)
    name = label or "sweep " + cfg.name
    if not todo and not len(spool):
        _say_todo(stream, name, outcome, uri, 0)
        return outcome
    check_trials(cfg, todo, plan.path)
    lease = Lease(uri, tracker.experiment_id, cfg.experiment,
                  "recommend" if label else "sweep", f"{name!r}" if label else f"sweep {cfg.name!r}",
                  [(*k, hashes[k[2]]) for k in todo], force=force, stream=stream)
    held = {k[:3] for k in lease.acquire()}  # LeaseHeld: one line, exit 2, nothing written
    try:
        if len(spool):  # holding the lease: replay what an earlier driver spooled, read again
            tracker.drain_spool()
            finished, _ = tracker.keys_by_status(hashes)
            todo = [k for k in wanted if pair_key(*k) not in finished]
            outcome.pairs_skipped = len(wanted) - len(todo)
        _say_todo(stream, name, outcome, uri, len(todo), len([k for k in todo if k in held]))
        rounds = 0
        while todo:
            mine = [k for k in todo if k not in held]
            if mine:
                _run_round(plan, paths, settings, metas, uri, mine, label, outcome, rounds,
                           stream)
                rounds += 1
            waiting = [k for k in todo if k in held]
            if not waiting:
                break
            todo, held = wait_for_keys(tracker, lease, waiting, hashes, stream), set()
            outcome.pairs_skipped += len(waiting) - len(todo)
    finally:
        lease.release()
    return outcome


def _say_todo(stream, name: str, outcome: Outcome, uri: str, n_todo: int, n_held: int = 0
              ) -> None:
    held = f" ({n_held} of them run by another driver, waited for)" if n_held else ""
    print(f"[whichmodel] {name}: {outcome.pairs_total} (model, task, protocol) keys, "
          f"{outcome.pairs_skipped} already finished in MLflow ({redact_uri(uri)}), "
          f"{n_todo} to run{held}", file=stream, flush=True)


def _run_round(plan: Plan, paths: Paths, settings: TrialSettings, metas: dict[str, dict],
               uri: str, todo: list[tuple[str, str, str]], label: str | None, outcome: Outcome,
               rounds: int, stream) -> None:
    """One Tune experiment over ``todo``; its results and failures added to ``outcome``."""
    from sweeps.tune_runner import experiment_path, init_ray, run_jobs  # Ray when a trial runs

    cfg = plan.cfg
    jobs = expand_jobs(cfg, todo)
    recorder = new_recorder(plan, paths, metas, uri, dict(Counter(j.kind for j in jobs)),
                            estimates=trial_estimates(plan, paths, jobs, stream))
    recorder.use(outcome.tracker)  # its read of the finished keys is the recorder's too
    name = f"{label or cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}" + (f"-{rounds}" if rounds else "")
    if label is None and not rounds:
        state = write_state(paths, plan, name, uri)
    else:
        state = {"experiment_path": experiment_path(paths.tune_root, name)}
    init_ray(cfg.resources.num_cpus)
    done = run_jobs(run_trial, jobs, settings, name=name, storage_path=paths.tune_root,
                    sink=recorder, resources=trial_resources(cfg),
                    max_failures=cfg.resources.max_failures,
                    max_concurrent_trials=cfg.resources.max_concurrent_trials)
    recorder.reconcile(done)
    outcome.pairs_logged += recorder.logged
    outcome.failures += recorder.failures
    outcome.experiment_path = outcome.experiment_path or state["experiment_path"]
    outcome.stage_s = outcome.stage_s or recorder.progress.stage_seconds()


def wait_for_keys(tracker: Tracker, lease: Lease, keys: list[tuple[str, str, str]],
                  hashes: dict[str, str], stream) -> list[tuple[str, str, str]]:
    """Wait while earlier live leases run ``keys``; returns those still unfinished when no live
    lease runs them any more (their driver ended or died: this one runs them)."""
    said = False
    while True:
        tracker.forget()  # each poll reads the server again
        finished, _ = tracker.keys_by_status(hashes)
        left = [k for k in keys if pair_key(*k) not in finished]
        holders = lease.holders_of([(*k, hashes[k[2]]) for k in left]) if left else []
        if not holders:
            return left
        if not said:
            print(f"[whichmodel] waiting for {len(left)} key(s) that {holders[0].describe()} "
                  "runs (each key is run once)", file=stream, flush=True)
            said = True
        time.sleep(POLL_S)


def open_tracker(uri: str, experiment: str, paths: Paths) -> Tracker:
    """The experiment's tracker (created if new; two drivers creating it at once both get it),
    with the home's spool (the writer's journal and the outage spool). What an earlier driver
    spooled is not replayed here: the caller does (:meth:`Tracker.drain_spool`) once it holds
    the sweep's lease."""
    from mlflow.exceptions import MlflowException

    for attempt in (0, 1):
        try:
            return Tracker(uri, experiment, artifact_root=artifact_root(uri, paths.artifacts_root),
                           spool_dir=paths.home / "spool", replay=False)
        except MlflowException as exc:  # created by another driver since we looked
            if attempt or exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    raise AssertionError("unreachable")


def resume_sweep(name: str, paths: Paths, stream=None, force: bool = False
                 ) -> tuple[Plan, Outcome]:
    """Continue the latest interrupted run of sweep ``name`` with Tune's restore (holding the
    sweep's lease, as ``run`` does)."""
    from sweeps.tune_runner import init_ray, restore_jobs

    stream = stream or sys.stderr
    state = read_state(paths, check_name(name, "resume"))
    plan = plan_sweep(state["config"])
    metas = check_plan(plan, paths)
    cfg, uri = plan.cfg, state["tracking_uri"]
    hashes = {p: cfg.protocol_hash(p) for p in plan.protocols}
    tracker = open_tracker(uri, cfg.experiment, paths)
    lease = Lease(uri, tracker.experiment_id, cfg.experiment, "sweep", f"sweep {cfg.name!r}",
                  [(*k, hashes[k[2]]) for k in plan.keys()], force=force, stream=stream)
    lease.acquire()
    try:
        recorder = new_recorder(plan, paths, metas, uri, {})
        tracker.drain_spool()  # what a killed driver left in the spool, its queued records too
        recorder.use(tracker)
        print(f"[whichmodel] resuming {state['experiment_path']}", file=stream, flush=True)
        init_ray(cfg.resources.num_cpus)
        try:
            done = restore_jobs(run_trial, trial_settings(plan, paths),
                                path=state["experiment_path"], resources=trial_resources(cfg))
        except FileNotFoundError:
            done = None
        if done is not None:
            recorder.reconcile(done)
            return plan, Outcome(cfg.experiment, plan.n_keys, 0, recorder.logged,
                                 recorder.failures, state["experiment_path"], uri,
                                 recorder.tracker.experiment_id, tracker=recorder.tracker)
    finally:
        lease.release()
    # Killed before Tune saved any state: a fresh run skips what MLflow has finished.
    print(f"[whichmodel] no Tune state at {state['experiment_path']}; running the sweep's "
          "unfinished pairs afresh", file=stream, flush=True)
    return plan, run_sweep(plan, paths, tracking_uri=uri, stream=stream, force=force)


def new_recorder(plan: Plan, paths: Paths, metas: dict[str, dict], uri: str,
                 n_jobs: dict[str, int], estimates: dict[str, float] | None = None
                 ) -> PairRecorder:
    return PairRecorder(plan, metas, uri, artifact_root(uri, paths.artifacts_root), n_jobs,
                        spool_dir=paths.home / "spool", estimates=estimates)


def trial_estimates(plan: Plan, paths: Paths, jobs, stream) -> dict[str, float] | None:
    """Each trial's estimated compute for the progress line (:mod:`sweeps.cost`), or None with
    a note: an estimate that cannot be made never stops a sweep."""
    from sweeps.cost import job_seconds
    from sweeps.device_rate import rate_of

    try:
        return job_seconds(plan, jobs, rate_of(plan.cfg, paths.home))
    except Exception as exc:  # noqa: BLE001 -- the progress line then counts trials only
        print(f"[whichmodel] no compute estimate for the progress line: {exc}", file=stream,
              flush=True)
        return None


def trial_settings(plan: Plan, paths: Paths) -> TrialSettings:
    remote = f"{paths.storage}/features/{plan.cfg.name}" if paths.storage else None
    return TrialSettings(plan.cfg, str(plan.data_root(paths)), str(paths.zoo_root),
                         str(within(paths.home, "features", plan.cfg.name)), remote,
                         model_refs=plan.model_refs, task_refs=plan.task_refs,
                         home=str(paths.home))


def trial_resources(cfg: SweepConfig):
    from sweeps.tune_runner import TrialResources

    r = cfg.resources
    finetune = (r.finetune.cpus, r.finetune.gpus)
    # the early-stop proxy is a short fine-tune: fine-tune resources
    return TrialResources({"probe": (r.probe.cpus, r.probe.gpus), "finetune": finetune,
                           "early_stop": finetune})


# --------------------------------------------------------------------------- sweep state files
def remembered_config(paths: Paths, experiment: str) -> Path | None:
    """The sweep file of the latest run whose experiment is ``experiment``, if still there."""
    for state_file in sorted((paths.home / "sweeps").glob("*.json")):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        if state.get("experiment") == experiment and Path(state["config"]).is_file():
            return Path(state["config"])
    return None


def write_state(paths: Paths, plan: Plan, name: str, uri: str) -> dict[str, str]:
    """Remember the latest Tune experiment of a sweep, for ``whichmodel resume NAME``: under the
    home folder, and in shared storage (``WHICHMODEL_STORAGE``) for a new head node."""
    from sweeps import storage
    from sweeps.tune_runner import experiment_path

    state = {"config": str(plan.path.resolve()), "tracking_uri": uri,
             "experiment": plan.cfg.experiment,
             "experiment_path": experiment_path(paths.tune_root, name)}
    text = json.dumps(state, indent=2)
    storage.write_text(within(paths.state_root, f"{plan.cfg.name}.json"), text)
    if paths.storage:
        storage.write_text(storage.join(paths.storage, "sweeps", f"{plan.cfg.name}.json"), text)
    return state


def read_state(paths: Paths, name: str) -> dict[str, str]:
    """The sweep's state file: this home folder's, else the shared storage's (a new head node)."""
    from sweeps import storage

    places: list[Any] = [within(paths.state_root, f"{name}.json")]
    if paths.storage:
        places.append(storage.join(paths.storage, "sweeps", f"{name}.json"))
    for place in places:
        try:
            return json.loads(storage.read_text(place))
        except FileNotFoundError:
            continue
    raise WhichModelError(f"{' or '.join(map(str, places))}: no run of sweep {name!r} to resume; "
                          "start one with 'whichmodel run CONFIG'")
