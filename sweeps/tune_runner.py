"""Where things run: local or cluster Ray, and one Ray Tune experiment over a list of jobs.

The zoo build and the sweep both hand this module a plain trial function ``fn(job, settings,
report) -> metrics`` (:mod:`sweeps.trials`) and a precomputed list of :class:`~sweeps.plan.Job`
(uneven model x task x protocol sets go through ``tune.grid_search`` of the list). Large
constants travel through ``tune.with_parameters``, never inside the search space. Results reach
the driver through Tune callbacks, so the driver is the single writer of MLflow.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import ray
from ray import tune

from sweeps.plan import Job
from whichmodel.names import BadNameError, within

#: A trial body: ``fn(job, settings, report) -> metrics or None`` (see :mod:`sweeps.trials`).
TrialFn = Callable[[Job, Any, Callable[[dict], None]], "dict | None"]

# Every node prestarts one idle worker per CPU (``enable_worker_prestart``; without it only the
# first driver's node does, and a second node's trial actors waited for a cold worker while Tune
# handed the trials to the warm node's cached actors: 8 trials on 2 nodes all ran on one), and
# each idle worker imports what every trial needs while it waits (torch, Lightning, timm, Tune),
# so a trial's actor starts warm (README, "Benchmarks"). Cluster nodes get the same through
# ``ray start --system-config`` (cluster.yaml).
PRELOAD_MODULES = ["torch", "pytorch_lightning", "timm", "ray.tune"]

# Environment every whichmodel Ray process needs (set unless the user set them):
RAY_ENV = {
    # Per-trial CSV/JSON/TensorBoard loggers are noise for thousands of small trials; MLflow is
    # the record. Read when Tune builds its callbacks.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
    # Experiment state (what resume restores) is saved at most this often.
    "TUNE_GLOBAL_CHECKPOINT_S": "30",
    # See prepare_ray: in the nodes' environment instead of each trial actor's runtime env.
    "PL_DISABLE_FORK": "1",
}


def worker_system_config() -> dict[str, Any]:
    """Ray's ``_system_config`` for warm workers, a new dict each call (Ray adds keys to it)."""
    return {"preload_python_modules": list(PRELOAD_MODULES), "enable_worker_prestart": True}


def prepare_ray() -> None:
    """Set what every whichmodel Ray needs; call before Ray starts (idempotent).

    Works around Ray 2.60: Tune gives every trial actor the runtime env ``{"env_vars":
    {"PL_DISABLE_FORK": "1"}}`` (``ray.tune.execution.class_cache.DEFAULT_ENV_VARS``), and Ray
    then refuses the prestarted (preloaded) workers, which have the default env: each
    experiment's first actors waited for a fresh worker to start and import torch and Lightning.
    The variable (Lightning then asks NVML, not CUDA, how many GPUs there are, which is safe in a
    forked process) is set in the node's environment instead, which every worker inherits: here
    before a local Ray starts, and by the cluster files before ``ray start``; Tune's entry is
    dropped. Re-check both when Ray moves past 2.60.
    """
    for name, value in RAY_ENV.items():
        os.environ.setdefault(name, value)
    from ray.tune.execution import class_cache

    class_cache.DEFAULT_ENV_VARS.pop("PL_DISABLE_FORK", None)


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` if set, else start a local Ray with its own temp dir."""
    prepare_ray()
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
        return
    # A short private temp dir: parallel runs must not share /tmp/ray, and Ray's socket paths
    # must stay under the 107-character limit.
    temp_dir = os.environ.get("WHICHMODEL_RAY_TEMP_DIR") or tempfile.mkdtemp(prefix="wmray-",
                                                                             dir="/tmp")
    os.makedirs(temp_dir, exist_ok=True)
    ray.init(num_cpus=num_cpus or os.cpu_count(), _temp_dir=temp_dir,
             _system_config=worker_system_config(), **kwargs)


def settled_idle_workers(timeout_s: float = 120.0, poll_s: float = 1.0) -> set[int]:
    """Pids of the idle Ray workers (``ray::IDLE``) of the local nodes this process started,
    once every node (raylet) has one and their CPU time has all but stopped growing: their
    preloading is done.

    For benchmarks and tests that time a warm local Ray, as a long-running cluster is.
    """
    import psutil

    deadline, last = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        now, raylets = {}, set()
        for p in psutil.Process().children(recursive=True):
            try:
                cmd = (p.cmdline() or [""])[0]
                if cmd.endswith("/raylet"):
                    raylets.add(p.pid)
                elif cmd.startswith("ray::IDLE"):
                    now[p.pid] = (p.ppid(), sum(p.cpu_times()[:2]))
            except psutil.Error:
                continue
        # Preloading burns about a core; an idle worker's heartbeats a few ms a second.
        if (raylets and raylets <= {parent for parent, _ in now.values()}
                and all(pid in last and cpu - last[pid][1] < 0.1 * poll_s
                        for pid, (_, cpu) in now.items())):
            return set(now)
        last = now
        time.sleep(poll_s)
    raise TimeoutError(f"Ray's idle workers were still busy after {timeout_s:.0f} s")


def _trainable(config: dict[str, Any], fn: TrialFn, settings: Any,
               threads: dict[str, int]) -> None:
    import torch

    from whichmodel.quiet import quiet_libraries

    quiet_libraries()
    job = config_job(config["job"])
    if getattr(fn, "uses_torch", True):  # a trial body that never imports torch (a simulation)
        import torch

        torch.set_num_threads(max(1, threads.get(job.kind, 1)))
    metrics = fn(job, settings, tune.report)
    if metrics is not None:  # None: the function reported by itself (e.g. rung by rung for ASHA)
        tune.report(metrics)


class ResultSink(Protocol):
    """Receives every finished trial's job and metrics in the driver (e.g. writes MLflow runs).

    It is pickled with Tune's run config into the experiment folder and comes back on
    ``Tuner.restore``, so it must keep only picklable state (open clients made lazily). A sink
    with a ``flush()`` method (work it queued for a thread of its own) has it called when the
    experiment ends, the restored copy's too.
    """

    def on_result(self, job: Job, metrics: dict) -> None: ...

    def on_error(self, job: Job, error: str) -> None: ...


def lost_its_worker(error: BaseException | None) -> bool:
    """Whether a trial failed because its worker process or node died, not because of its code.

    Such a trial is worth running again elsewhere; a trial whose own code raised is not.
    """
    from ray.exceptions import (
        LocalRayletDiedError,
        NodeDiedError,
        ObjectLostError,
        RayActorError,
        RayTaskError,
        WorkerCrashedError,
    )

    if isinstance(error, RayTaskError):
        error = error.cause if isinstance(error.cause, BaseException) else None
    return isinstance(error, (RayActorError, NodeDiedError, WorkerCrashedError, ObjectLostError,
                              LocalRayletDiedError))


def job_key(job: Job) -> str:
    """A job as JSON: its key, and its value in a trial's config.

    A string, not a dict, in the config: Tune rebuilds every dict and list of the search space
    (``ray.tune.impl.placeholder.inject_placeholders``) and then deep-copies the whole space for
    each trial it generates (``variant_generator._grid_search_generator``, Ray 2.60), so a grid of
    N job dicts cost N copies of N dicts: 108 s for 2,000 jobs on this machine, about 9 minutes
    before the first of the paper's 5,472 trials (``benchmarks/cluster_sim.py``). A string is
    copied as a reference: 3.9 s for 2,000, 36 s for 5,472 (still quadratic in the list, but
    small beside a study's days)."""
    return json.dumps(job.to_dict(), sort_keys=True, default=str)


def config_job(value: str | dict) -> Job:
    """The job of a trial's config (:func:`job_key`; a dict in experiments from before)."""
    return Job.from_dict(json.loads(value) if isinstance(value, str) else value)


def _trial_error(trial) -> BaseException | None:
    """The exception a trial failed with, from its local error file (storage may lag)."""
    import ray.cloudpickle as cloudpickle

    path = trial.pickled_error_file
    try:
        if path and Path(path).is_file():
            return cloudpickle.loads(Path(path).read_bytes())
        return trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - an unreadable error is not a lost worker
        return None


class _Forward(tune.Callback):
    """Hands finished and failed trials to the sink; keeps back, for another round, the trials
    that lost their node or worker while they still had retries left.

    Tune retries a failed trial by itself (``FailureConfig.max_failures``), but when a node dies
    mid-trial its dead actor can fail twice at once and Tune then gives up with retries unspent
    (seen with Ray 2.60: ERROR after 2 of 3 failures). ``attempts`` is None in the first round
    (the budget is ``max_failures + 1`` attempts less the trial's failures) and maps job keys to
    the attempts left in later rounds, which run with no in-round retries.
    """

    def __init__(self, sink: ResultSink, attempts: dict[str, float] | None = None):
        self.sink, self.attempts = sink, attempts
        self.lost: list[tuple[dict, float]] = []  # (job, attempts left) to run again
        self.keep_back = True

    def __getstate__(self):
        # The copy pickled with the experiment comes back on ``Tuner.restore``, where no round
        # follows: there it reports every failed trial to the sink.
        return {**self.__dict__, "lost": [], "keep_back": False}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.sink.on_result(config_job(trial.config["job"]), dict(trial.last_result or {}))

    def on_experiment_end(self, trials, **info):
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()

    def _attempts_left(self, trial) -> float:
        if self.attempts is not None:
            return self.attempts.get(job_key(config_job(trial.config["job"])), 0)
        if trial.max_failures < 0:
            return math.inf
        return trial.max_failures + 1 - trial.num_failures

    def on_trial_error(self, iteration, trials, trial, **info):
        job = config_job(trial.config["job"])
        left = self._attempts_left(trial)
        error = _trial_error(trial)
        if self.keep_back and left > 0 and lost_its_worker(error):
            self.lost.append((job, left))
            print(f"[whichmodel] {job.describe()} lost its worker ({type(error).__name__}); "
                  "it runs again after this round", file=sys.stderr, flush=True)
            return
        self.sink.on_error(job, str(getattr(trial, "error_file", "") or "trial failed"))


@dataclass(frozen=True)
class TrialResources:
    """CPUs and GPUs per trial kind (fractional GPUs are logical only: no memory isolation)."""

    by_kind: dict[str, tuple[float, float]]  # kind -> (cpus, gpus)

    def threads(self) -> dict[str, int]:
        return {k: max(1, int(c)) for k, (c, _) in self.by_kind.items()}

    def for_config(self, config: dict) -> Any:
        cpus, gpus = self.by_kind.get(config_job(config["job"]).kind, (1, 0))
        bundle = {"CPU": cpus}
        if gpus:
            bundle["GPU"] = gpus
        return tune.PlacementGroupFactory([bundle])


def wrap_trainable(fn: TrialFn, settings: Any,
                   resources: TrialResources):
    return tune.with_resources(
        tune.with_parameters(_trainable, fn=fn, settings=settings, threads=resources.threads()),
        resources.for_config)


def experiment_path(storage_path: str | Path, name: str) -> str:
    storage = str(storage_path)
    if "://" not in storage:
        Path(storage).mkdir(parents=True, exist_ok=True)
        return str(within(storage, name))
    # made of names that passed whichmodel.names.check_name, and a time stamp
    if "/" in name or "\x00" in name or name.startswith("."):
        raise BadNameError(f"{storage}: refusing the Tune experiment {name!r}: it would leave "
                           "the folder")
    return f"{storage.rstrip('/')}/{name}"


def _finished(results) -> list[tuple[Job, dict]]:
    out = []
    for r in results:
        if r.error is None and r.config and r.metrics:
            out.append((config_job(r.config["job"]), dict(r.metrics)))
    return out


def run_jobs(fn: TrialFn, jobs: Sequence[Job], settings: Any, *,
             name: str, storage_path: str | Path, sink: ResultSink, resources: TrialResources,
             max_concurrent_trials: int | None = None,
             max_failures: int = 1) -> list[tuple[Job, dict]]:
    """Run ``fn(job, settings, report)`` for every job as one Tune trial each, in list order.

    Trials that lost their node or worker with retries left (see ``_Forward``) run again in
    further experiments ``NAME-retryN`` once this one ends, each with no in-round retries, until
    they finish or their ``max_failures + 1`` attempts are spent.

    Returns (job, metrics) of every finished trial, for the caller to reconcile with what the
    sink already recorded.
    """
    if not jobs:
        return []
    prepare_ray()
    forward = _Forward(sink)
    results = _fit(fn, jobs, settings, name=name, storage_path=storage_path,
                   resources=resources, max_concurrent_trials=max_concurrent_trials,
                   max_failures=max_failures, callback=forward)
    finished = _finished(results)
    round_ = 0
    while forward.lost:
        # The nodes that died are gone by now: the rest of the sweep ran, Ray has marked them dead.
        round_ += 1
        lost = forward.lost
        print(f"[whichmodel] running {len(lost)} trial(s) that lost their worker again "
              f"({name}-retry{round_})", file=sys.stderr, flush=True)
        forward = _Forward(sink, attempts={job_key(job): left - 1 for job, left in lost})
        results = _fit(fn, [job for job, _ in lost], settings, name=f"{name}-retry{round_}",
                       storage_path=storage_path, resources=resources,
                       max_concurrent_trials=max_concurrent_trials, max_failures=0,
                       callback=forward)
        finished += _finished(results)
    return finished


def _fit(fn, jobs, settings, *, name, storage_path, resources, max_concurrent_trials,
         max_failures, callback):
    path = experiment_path(storage_path, name)
    tuner = tune.Tuner(
        wrap_trainable(fn, settings, resources),
        param_space={"job": tune.grid_search([job_key(job) for job in jobs])},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=path.rsplit("/", 1)[0], verbose=0,
                                  callbacks=[callback],
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    return tuner.fit()


def restore_jobs(fn: TrialFn, settings: Any, *, path: str,
                 resources: TrialResources) -> list[tuple[Job, dict]]:
    """Continue an interrupted experiment (Tune's restore): finished trials are not run again."""
    if not tune.Tuner.can_restore(path):
        raise FileNotFoundError(path)
    tuner = tune.Tuner.restore(path, trainable=wrap_trainable(fn, settings, resources),
                               resume_unfinished=True, resume_errored=True)
    return _finished(tuner.fit())
