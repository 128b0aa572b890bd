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

from sweeps.config import SweepConfig, WhichModelError
from sweeps.paths import Paths
from sweeps.plan import Plan, check_plan, expand_jobs, pair_key, plan_sweep
from sweeps.tracking.client import Tracker
from sweeps.tracking.recorder import PairRecorder, artifact_root
from sweeps.trials import TrialSettings, run_trial
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
              label: str | None = None) -> Outcome:
    """Run the plan's (model, task, protocol) keys that MLflow has not finished.

    ``keys``: only these keys of the plan (``whichmodel recommend``: the pool's probes, then the
    picks' fine-tunes). ``label``: the Tune experiment's name prefix for such a partial run,
    which writes no sweep state (``resume`` continues whole sweeps only)."""
    stream = stream or sys.stderr
    cfg = plan.cfg
    # Every model opens and every task's data is there, before anything runs or is written.
    metas = check_plan(plan, paths)
    settings = trial_settings(plan, paths)
    for task in plan.tasks:  # build (or read) each task's cache once here, not in every trial
        try:
            settings.load_task(task)
        except (ValueError, OSError) as exc:
            raise WhichModelError(f"task {task!r}: {exc}") from None
    uri = paths.tracking_uri(tracking_uri)
    hashes = {p: cfg.protocol_hash(p) for p in plan.protocols}
    tracker = Tracker(uri, cfg.experiment, artifact_root=artifact_root(uri, paths.artifacts_root),
                      spool_dir=paths.home / "spool")  # preflight; replays an earlier spool
    finished, _ = tracker.keys_by_status(hashes)  # ids, status, tags: no metric travels

    wanted = keys if keys is not None else [(m, t, p) for p in plan.protocols
                                            for m in plan.models for t in plan.tasks]
    todo = [(m, t, p) for m, t, p in wanted if pair_key(m, t, p) not in finished]
    outcome = Outcome(cfg.experiment, len(wanted), len(wanted) - len(todo), tracking_uri=uri,
                      experiment_id=tracker.experiment_id, tracker=tracker)
    print(f"[whichmodel] {label or 'sweep ' + cfg.name}: {len(wanted)} (model, task, protocol) keys, "
          f"{outcome.pairs_skipped} already finished in MLflow ({redact_uri(uri)}), "
          f"{len(todo)} to run", file=stream, flush=True)
    if not todo:
        return outcome

    from sweeps.tune_runner import init_ray, run_jobs  # Ray only when a trial runs

    jobs = expand_jobs(cfg, todo)
    recorder = new_recorder(plan, paths, metas, uri, dict(Counter(j.kind for j in jobs)))
    recorder.use(tracker)  # its read of the finished keys is the recorder's too
    name = f"{label or cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if label is None:
        state = write_state(paths, plan, name, uri)
    else:
        from sweeps.tune_runner import experiment_path

        state = {"experiment_path": experiment_path(paths.tune_root, name)}
    init_ray(cfg.resources.num_cpus)
    done = run_jobs(run_trial, jobs, settings, name=name, storage_path=paths.tune_root,
                    sink=recorder, resources=trial_resources(cfg),
                    max_failures=cfg.resources.max_failures,
                    max_concurrent_trials=cfg.resources.max_concurrent_trials)
    recorder.reconcile(done)
    outcome.pairs_logged, outcome.failures = recorder.logged, recorder.failures
    outcome.experiment_path = state["experiment_path"]
    outcome.stage_s = recorder.progress.stage_seconds()
    return outcome


def resume_sweep(name: str, paths: Paths, stream=None) -> tuple[Plan, Outcome]:
    """Continue the latest interrupted run of sweep ``name`` with Tune's restore."""
    from sweeps.tune_runner import init_ray, restore_jobs

    stream = stream or sys.stderr
    state = read_state(paths, name)
    plan = plan_sweep(state["config"])
    metas = check_plan(plan, paths)
    cfg, uri = plan.cfg, state["tracking_uri"]
    recorder = new_recorder(plan, paths, metas, uri, {})
    # preflight; replays what a killed driver left in the spool (its queued records included)
    recorder.use(Tracker(uri, cfg.experiment, artifact_root=artifact_root(uri, paths.artifacts_root),
                         spool_dir=paths.home / "spool"))
    print(f"[whichmodel] resuming {state['experiment_path']}", file=stream, flush=True)
    init_ray(cfg.resources.num_cpus)
    try:
        done = restore_jobs(run_trial, trial_settings(plan, paths), path=state["experiment_path"],
                            resources=trial_resources(cfg))
    except FileNotFoundError:
        # Killed before Tune saved any state: a fresh run skips what MLflow has finished.
        print(f"[whichmodel] no Tune state at {state['experiment_path']}; running the sweep's "
              "unfinished pairs afresh", file=stream, flush=True)
        return plan, run_sweep(plan, paths, tracking_uri=uri, stream=stream)
    recorder.reconcile(done)
    outcome = Outcome(cfg.experiment, plan.n_keys, 0, recorder.logged, recorder.failures,
                      state["experiment_path"], uri, recorder.tracker.experiment_id,
                      tracker=recorder.tracker)
    return plan, outcome


def new_recorder(plan: Plan, paths: Paths, metas: dict[str, dict], uri: str,
                 n_jobs: dict[str, int]) -> PairRecorder:
    return PairRecorder(plan, metas, uri, artifact_root(uri, paths.artifacts_root), n_jobs,
                        spool_dir=paths.home / "spool")


def trial_settings(plan: Plan, paths: Paths) -> TrialSettings:
    remote = f"{paths.storage}/features/{plan.cfg.name}" if paths.storage else None
    return TrialSettings(plan.cfg, str(plan.data_root(paths)), str(paths.zoo_root),
                         str(paths.home / "features" / plan.cfg.name), remote,
                         model_refs=plan.model_refs, task_refs=plan.task_refs)


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
    storage.write_text(paths.state_root / f"{plan.cfg.name}.json", text)
    if paths.storage:
        storage.write_text(storage.join(paths.storage, "sweeps", f"{plan.cfg.name}.json"), text)
    return state


def read_state(paths: Paths, name: str) -> dict[str, str]:
    """The sweep's state file: this home folder's, else the shared storage's (a new head node)."""
    from sweeps import storage

    places: list[Any] = [paths.state_root / f"{name}.json"]
    if paths.storage:
        places.append(storage.join(paths.storage, "sweeps", f"{name}.json"))
    for place in places:
        try:
            return json.loads(storage.read_text(place))
        except FileNotFoundError:
            continue
    raise WhichModelError(f"{' or '.join(map(str, places))}: no run of sweep {name!r} to resume; "
                          "start one with 'whichmodel run CONFIG'")
