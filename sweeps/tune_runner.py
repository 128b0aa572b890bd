"""Where things run: local or cluster Ray, and one Ray Tune experiment over a list of jobs.

The zoo build and the sweep both hand this module a plain trial function ``fn(job, settings) ->
metrics`` and a precomputed list of job dicts (uneven model x task x protocol sets go through
``tune.grid_search`` of the list). Large constants travel through ``tune.with_parameters``, never
inside the search space. Results reach the driver through Tune callbacks, so the driver is the
single writer of MLflow.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

# Per-trial CSV/JSON/TensorBoard loggers are noise for thousands of small trials; MLflow is the
# record. Must be set before Tune builds its callbacks.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Experiment state (what resume restores) is saved at most this often.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "30")

import ray  # noqa: E402
from ray import tune  # noqa: E402


# Ray prestarts idle workers when it starts; these import what every trial needs (torch and
# Lightning: ~4 s on 2 cores) while they wait, so a trial's actor starts warm (measured: actor
# creation + imports 4.5 s -> 0.4 s). Cluster nodes get the same through ``ray start
# --system-config`` (cluster.yaml).
PRELOAD_MODULES = ["torch", "pytorch_lightning", "timm"]
WORKER_SYSTEM_CONFIG = {"preload_python_modules": PRELOAD_MODULES}


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to ``RAY_ADDRESS`` if set, else start a local Ray with its own temp dir."""
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
             _system_config=WORKER_SYSTEM_CONFIG, **kwargs)


def _trainable(config: dict[str, Any], fn: Callable[[dict, Any], dict], settings: Any,
               threads: dict[str, int]) -> None:
    import torch

    from sweeps.quiet import quiet_libraries

    quiet_libraries()
    job = config["job"]
    torch.set_num_threads(max(1, threads.get(job.get("kind", ""), 1)))
    metrics = fn(job, settings)
    if metrics is not None:  # None: the function reported by itself (e.g. rung by rung for ASHA)
        tune.report(metrics)


class Progress:
    """Counts finished jobs by kind and prints pairs done of total, elapsed and an estimate."""

    def __init__(self, total_by_kind: dict[str, int], stream=None, every_s: float = 15.0):
        self.total = dict(total_by_kind)
        self.done = {k: 0 for k in total_by_kind}
        self.failed = 0
        self.start = time.monotonic()
        self.stream, self.every_s, self._last = stream, every_s, 0.0

    def update(self, kind: str, failed: bool = False, force: bool = False) -> None:
        self.done[kind] = self.done.get(kind, 0) + 1
        self.failed += int(failed)
        now = time.monotonic()
        if force or now - self._last >= self.every_s or self.n_done == self.n_total:
            self._last = now
            print(self.line(), file=self.stream or sys.stderr, flush=True)

    @property
    def n_done(self) -> int:
        return sum(self.done.values())

    @property
    def n_total(self) -> int:
        return sum(self.total.values())

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        parts = " ".join(f"{k} {self.done.get(k, 0)}/{n}" for k, n in self.total.items())
        eta = elapsed / self.n_done * (self.n_total - self.n_done) if self.n_done else float("nan")
        fail = f" | {self.failed} failed" if self.failed else ""
        return (f"[whichmodel] {parts} | elapsed {_fmt(elapsed)} | "
                f"eta {_fmt(eta) if eta == eta else '?'}{fail}")


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class ResultSink(Protocol):
    """Receives every finished trial's job and metrics in the driver (e.g. writes MLflow runs).

    It is pickled with Tune's run config into the experiment folder and comes back on
    ``Tuner.restore``, so it must keep only picklable state (open clients made lazily).
    """

    def on_result(self, job: dict, metrics: dict) -> None: ...

    def on_error(self, job: dict, error: str) -> None: ...


class _Forward(tune.Callback):
    def __init__(self, sink: ResultSink):
        self.sink = sink

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.sink.on_result(trial.config["job"], dict(trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.sink.on_error(trial.config["job"],
                           str(getattr(trial, "error_file", "") or "trial failed"))


@dataclass(frozen=True)
class TrialResources:
    """CPUs and GPUs per trial kind (fractional GPUs are logical only: no memory isolation)."""

    by_kind: dict[str, tuple[float, float]]  # kind -> (cpus, gpus)

    def threads(self) -> dict[str, int]:
        return {k: max(1, int(c)) for k, (c, _) in self.by_kind.items()}

    def for_config(self, config: dict) -> Any:
        cpus, gpus = self.by_kind.get(config["job"].get("kind", ""), (1, 0))
        bundle = {"CPU": cpus}
        if gpus:
            bundle["GPU"] = gpus
        return tune.PlacementGroupFactory([bundle])


def wrap_trainable(fn: Callable[[dict, Any], dict | None], settings: Any,
                   resources: TrialResources):
    return tune.with_resources(
        tune.with_parameters(_trainable, fn=fn, settings=settings, threads=resources.threads()),
        resources.for_config)


def experiment_path(storage_path: str | Path, name: str) -> str:
    storage = str(storage_path)
    if "://" not in storage:
        Path(storage).mkdir(parents=True, exist_ok=True)
        storage = str(Path(storage).resolve())
    return f"{storage.rstrip('/')}/{name}"


def _finished(results) -> list[tuple[dict, dict]]:
    out = []
    for r in results:
        if r.error is None and r.config and r.metrics:
            out.append((r.config["job"], dict(r.metrics)))
    return out


def run_jobs(fn: Callable[[dict, Any], dict], jobs: Sequence[dict], settings: Any, *,
             name: str, storage_path: str | Path, sink: ResultSink, resources: TrialResources,
             max_concurrent_trials: int | None = None,
             max_failures: int = 1) -> list[tuple[dict, dict]]:
    """Run ``fn(job, settings)`` for every job as one Tune trial each, in list order.

    Returns (job, metrics) of every finished trial, for the caller to reconcile with what the
    sink already recorded.
    """
    if not jobs:
        return []
    path = experiment_path(storage_path, name)
    tuner = tune.Tuner(
        wrap_trainable(fn, settings, resources),
        param_space={"job": tune.grid_search(list(jobs))},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent_trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=path.rsplit("/", 1)[0], verbose=0,
                                  callbacks=[_Forward(sink)],
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    return _finished(tuner.fit())


def restore_jobs(fn: Callable[[dict, Any], dict], settings: Any, *, path: str,
                 resources: TrialResources) -> list[tuple[dict, dict]]:
    """Continue an interrupted experiment (Tune's restore): finished trials are not run again."""
    if not tune.Tuner.can_restore(path):
        raise FileNotFoundError(path)
    tuner = tune.Tuner.restore(path, trainable=wrap_trainable(fn, settings, resources),
                               resume_unfinished=True, resume_errored=True)
    return _finished(tuner.fit())
