"""Trial actors start on Ray's idle, preloaded workers, not on fresh ones.

Tune would give every trial actor a runtime env (``PL_DISABLE_FORK``) that Ray's idle workers
lack, so each experiment's first trials waited for a new worker to start and import torch and
Lightning (5.5 s here). ``sweeps.tune_runner`` moves the variable into the nodes' environment.
"""

from __future__ import annotations

import sys
import time

from sweeps.tune_runner import PRELOAD_MODULES, TrialResources, run_jobs, settled_idle_workers


class Sink:
    def __init__(self):
        self.errors = []

    def on_result(self, job, metrics):
        pass

    def on_error(self, job, error):
        self.errors.append(error)


def worker_facts(job, settings):
    import os

    import psutil

    return {"pid": os.getpid(), "created": psutil.Process().create_time(),
            "preloaded": all(m in sys.modules for m in PRELOAD_MODULES),
            "pl_disable_fork": os.environ.get("PL_DISABLE_FORK")}


def test_trial_actor_runs_on_an_idle_preloaded_worker_with_pl_disable_fork(ray_session,
                                                                           tmp_path):
    import ray.cloudpickle as cloudpickle

    idle = settled_idle_workers()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        called = time.time()
        sink = Sink()
        done = run_jobs(worker_facts, [{"kind": "x"}], None, name="warm",
                        storage_path=tmp_path, sink=sink, resources=TrialResources({"x": (1, 0)}))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert sink.errors == [] and len(done) == 1
    facts = done[0][1]
    assert facts["pid"] in idle and facts["created"] < called
    assert facts["preloaded"] and facts["pl_disable_fork"] == "1"
