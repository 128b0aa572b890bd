"""The paper's study scheduled at full scale on a simulated GPU cluster, on this machine.

    python -m benchmarks.cluster_sim --quick     # 2 nodes x 2 GPUs, 4 models x 4 tasks: ~6 min
    python -m benchmarks.cluster_sim             # 4 nodes x 2 GPUs, vtab1k.yaml's whole plan
    python -m benchmarks.cluster_sim --gpus-per-node 8    # the 4 x 8 cluster (~128 trial actors)

A local Ray cluster (``ray.cluster_utils.Cluster``: a head without trial resources, as
``cluster.yaml`` starts it, and ``--nodes`` worker nodes declaring ``--gpus-per-node`` logical
GPUs and ``--cpus-per-node`` logical CPUs on this CPU machine) runs the trial list of
``sweeps/configs/vtab1k.yaml``'s plan (:func:`sweeps.plan.expand_jobs`: a probe, an early-stop
trial and the per-run fine-tune trials of every (model, task), with the config's resources: a
probe 0.25 GPU, everything else 1 GPU) through the sweep's own runner
(:func:`sweeps.tune_runner.run_jobs`). Each trial sleeps for its duration under the cost model
of :func:`sweeps.cost.job_seconds` (the model's FLOPs x images at ``benchmarks.study_cost``'s
assumed 50 TFLOP/s, plus 15 s to load a trial; times a seeded log-normal factor, sigma 0.1),
compressed by one factor so that the ideal schedule takes ``--minutes``, at least
``--floor-s`` (2 s: the orchestration of a trial costs ~0.5 s on this 2-core machine, so
shorter sleeps would measure the machine, not the schedule), then returns results shaped as
the real trial's (accuracies, proxies, the loss curve of 250 points, the test predictions of
the task's real test size). The driver logs them through the real recorder
(:class:`sweeps.tracking.recorder.PairRecorder`) to the real tracking stack
(:func:`mlflow_server.local.local_stack`: PostgreSQL, S3, basic auth).

The last line of stdout is one JSON object:

``sim_trials``; ``sim_gpu_utilisation`` [>= 0.9]
    GPU-seconds the trials held over the GPU-seconds the cluster had while trials were queued:
    from the first moment every GPU was held (``sim_startup_s`` after the first trial's start:
    the first wave's actors start one after the other on 2 cores) to the last trial's start;
    ``sim_gpu_utilisation_with_startup`` from the first trial's start.
``sim_slot_refill_s`` (median, p95)
    from a trial's end to the next trial's start, for ends while trials were queued.
``sim_driver_s_per_trial``, ``sim_driver_peak_rss_gib``
    the driver process's CPU seconds (user + system: Tune's loop and the recorder) per trial,
    and its peak resident memory.
``sim_recorder_lag_s`` (median, p95, max), ``sim_recorder_busy_fraction``
    from a pair's last trial's end to its MLflow run being written; the fraction of the run's
    wall time the driver spent in the recorder (Tune's loop starts no trial meanwhile).
``sim_runs_missing``, ``sim_runs_duplicated`` [0, 0]
    (model, task, protocol) keys with no finished run, and finished runs beyond one per key.
Also ``sim_first_trial_s`` (from ``run_jobs`` to the first trial's start: Tune's set-up),
``sim_compression`` (projected seconds per simulated second) and ``sim_wall_s``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Ray's gRPC servers listen on every interface whatever the flags: this cluster requires Ray's
# token authentication, a random token per run (set before Ray is imported: read once).
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

from benchmarks.harness import finite, log  # noqa: E402
from sweeps.plan import Job, pair_key  # noqa: E402
from sweeps.tracking.recorder import PairRecorder  # noqa: E402
from sweeps.tune_runner import job_key  # noqa: E402

# Ray swaps 127.0.0.1 for the machine's routable address on a node of a multi-node cluster;
# other loopback addresses it keeps (tests/cluster/raycluster.py).
NODE_IP = "127.0.0.2"


@dataclass(frozen=True)
class SimSettings:
    durations: dict[str, float]  # job_key -> seconds to sleep
    proxies: tuple[str, ...]
    test_sizes: dict[str, int]
    classes: dict[str, int]
    curve_points: int


def sim_trial(job: Job, settings: SimSettings, report=None) -> dict[str, Any]:
    """Sleep for the job's simulated duration; return what the real trial body returns."""
    import random

    started = time.time()
    time.sleep(settings.durations[job_key(job)])
    rng = random.Random(job_key(job))
    out: dict[str, Any] = {"task_digest": f"sim-{job.task}", "started_at": started}
    if job.kind == "probe":
        out["time/features"] = 1.0
        for name in settings.proxies:
            if name != "early_stop":
                out[f"proxy/{name}"], out[f"time/proxy/{name}"] = rng.random(), 0.1
    elif job.kind == "early_stop":
        out.update({"proxy/early_stop": rng.random(), "time/proxy/early_stop": 1.0,
                    "time/early_stop_train_eval": 1.0, "early_stop_micro_batch": 512})
    else:
        n, c = settings.test_sizes[job.task], settings.classes[job.task]
        curves, preds = {}, {}
        for lr, rep in job.runs:
            key = f"lr_{lr:g}/rep{rep}"
            out[f"{key}/val_acc"], out[f"{key}/test_acc"] = rng.random(), rng.random()
            out[f"{key}/micro_batch"] = 512
            curves[key] = [(10 * i, 2.0 / (1 + i)) for i in range(settings.curve_points)]
            preds[key] = [rng.randrange(c) for _ in range(n)]
        out.update(curves=json.dumps(curves), val_curves="{}", test_predictions=json.dumps(preds),
                   test_labels=json.dumps([i % c for i in range(n)]), **{"time/finetune": 1.0})
    out["ended_at"] = time.time()
    return out


sim_trial.uses_torch = False  # the runner leaves torch unimported: light trial actors


class TimedRecorder(PairRecorder):
    """The sweep's recorder, noting when each pair's run is written (its lag behind the pair's
    last trial) and how long the driver spent in it (Tune's loop waits meanwhile)."""

    def _log(self, model, task, protocol, metrics, *args, span=None, **kwargs):
        super()._log(model, task, protocol, metrics, *args, span=span, **kwargs)
        if span is not None:
            self.__dict__.setdefault("lags", []).append(time.time() - span[1])

    def on_result(self, job, metrics) -> None:
        start = time.perf_counter()
        super().on_result(job, metrics)
        self.__dict__["busy_s"] = self.__dict__.get("busy_s", 0.0) + time.perf_counter() - start


def choose(plan, quick: bool, models: int | None, tasks: int | None):
    keys = plan.keys()
    if quick or models or tasks:
        # the quick size: small and large models alike (every sixth), a few tasks
        ms = plan.models[::max(1, len(plan.models) // (models or 4))][:models or 4]
        ts = plan.tasks[:tasks or 4]
        keys = [k for k in keys if k[0] in ms and k[1] in ts]
    return keys


#: seconds of a trial that are not compute: loading the model and the task, the Trainer's set-up
TRIAL_FIXED_S = 15.0


def durations(plan, jobs: list[Job], minutes: float, gpus: int, seed: int, floor_s: float
              ) -> tuple[dict[str, float], float]:
    """Seconds each job sleeps: its projected seconds (:func:`sweeps.cost.job_seconds` at
    ``benchmarks.study_cost``'s assumed rate, plus ``TRIAL_FIXED_S``) / one compression factor
    (the ideal schedule, GPU-seconds over GPUs, lasts ``minutes``) x a seeded log-normal factor,
    at least ``floor_s``."""
    import random

    from benchmarks.study_cost import RATE_TFLOPS
    from sweeps.cost import job_seconds
    from sweeps.device_rate import Rate

    r = plan.cfg.resources
    device_s = job_seconds(plan, jobs, Rate(RATE_TFLOPS, "assumed"))
    projected = {job_key(j): TRIAL_FIXED_S + device_s[j.describe()] for j in jobs}
    gpu_s = sum(projected[job_key(j)] * (r.probe.gpus if j.kind == "probe" else r.finetune.gpus)
                for j in jobs)
    compression = gpu_s / gpus / (60 * minutes)
    rng = random.Random(seed)
    return ({k: max(floor_s, s / compression * math.exp(rng.gauss(0, 0.1)))
             for k, s in projected.items()}, compression)


def utilisation(trials: list[tuple[Job, dict]], gpus_of: dict[str, float], total_gpus: int
                ) -> dict[str, Any]:
    """GPU-seconds held over GPU-seconds available while trials were queued (until the last
    trial's start): from the first moment every GPU was held (the steady state of a long study:
    on this 2-core machine the first wave's actors start one after the other) and, with the
    start-up, from the first trial's start; and the time from a trial's end to the next start."""
    import bisect

    spans = sorted((m["started_at"], m["ended_at"], gpus_of[j.kind]) for j, m in trials)
    first, last_start = spans[0][0], spans[-1][0]
    events = sorted([(s, g) for s, _, g in spans] + [(e, -g) for _, e, g in spans])
    held, full = 0.0, None
    for t, delta in events:
        held += delta
        if held >= total_gpus - 1e-9:
            full = t
            break

    def share(start: float) -> float:
        window = max(1e-9, last_start - start)
        busy = sum(g * max(0.0, min(e, last_start) - max(s, start)) for s, e, g in spans)
        return busy / (total_gpus * window)

    starts = [s for s, _, _ in spans]
    gaps = sorted(starts[i] - e for _, e, _ in spans if e < last_start
                  for i in [bisect.bisect_left(starts, e)] if i < len(starts))
    return {"sim_gpu_utilisation": share(full if full is not None else first),
            "sim_gpu_utilisation_with_startup": share(first),
            "sim_startup_s": (full - first) if full is not None else None,
            "sim_queued_window_s": last_start - first,
            "sim_slot_refill_s": {"median": statistics.median(gaps) if gaps else None,
                                  "p95": gaps[int(0.95 * (len(gaps) - 1))] if gaps else None}}


def count_pair_runs(tracker, keys: list[tuple[str, str, str]]) -> dict[str, int]:
    finished = Counter(r.data.tags.get("pair_key") for r in tracker.search()
                       if r.info.status == "FINISHED" and "mlflow.parentRunId" not in r.data.tags)
    wanted = [pair_key(*k) for k in keys]
    return {"sim_runs_missing": sum(finished[k] == 0 for k in wanted),
            "sim_runs_duplicated": sum(max(0, finished[k] - 1) for k in wanted)}


def run(args) -> dict[str, Any]:
    import logging

    import ray
    from ray.cluster_utils import Cluster

    from benchmarks.harness import driver_peak_rss_gib, reset_peak_rss
    from benchmarks.study_cost import CONFIG
    from lightning_modules.tasks import get_task
    from mlflow_server.local import local_stack
    from sweeps.driver import trial_resources
    from sweeps.plan import expand_jobs, plan_sweep
    from sweeps.tune_runner import prepare_ray, run_jobs

    plan = plan_sweep(CONFIG)
    keys = choose(plan, args.quick, args.models, args.tasks)
    jobs = expand_jobs(plan.cfg, keys)
    total_gpus = args.nodes * args.gpus_per_node
    sleeps, compression = durations(plan, jobs, args.minutes, total_gpus, args.seed,
                                    args.floor_s)
    tasks = {t: get_task(f"vtab:{t}").info for t in plan.tasks}
    settings = SimSettings(sleeps, tuple(plan.cfg.probe.proxies),
                           {t: int(i.test_size or 10_000) for t, i in tasks.items()},
                           {t: i.num_classes for t, i in tasks.items()},
                           plan.cfg.finetune.steps // plan.cfg.finetune.curve_every)
    r = plan.cfg.resources
    gpus_of = {"probe": r.probe.gpus, "early_stop": r.finetune.gpus, "finetune": r.finetune.gpus}
    log(f"{len(jobs)} trials of {len(keys)} keys on {args.nodes} x {args.gpus_per_node} GPUs, "
        f"compression {compression:.0f}")
    root = Path(tempfile.mkdtemp(prefix="wm-sim-", dir="/tmp"))
    root.chmod(0o711)  # PostgreSQL (as its own user when we are root) reaches its folder
    prepare_ray()
    # Ray notes the latest cluster's address in $RAY_TMPDIR/ray/ray_current_cluster: here, not
    # in the /tmp/ray that other Ray instances on this machine share
    os.environ["RAY_TMPDIR"] = str(root)
    (root / "ray").mkdir()
    cluster = None
    try:
        with local_stack(root / "stack", durable=False, workers=args.mlflow_workers) as stack:
            os.environ.update(stack.client_env())
            common = {"include_dashboard": False, "node_ip_address": NODE_IP}
            cluster = Cluster(initialize_head=True, head_node_args={
                **common, "num_cpus": 0, "temp_dir": str(root / "ray-head")})
            for i in range(args.nodes):
                cluster.add_node(**common, num_cpus=args.cpus_per_node,
                                 num_gpus=args.gpus_per_node, temp_dir=str(root / f"ray-w{i}"))
            cluster.wait_for_nodes()
            ray.init(address=cluster.address, logging_level=logging.WARNING)
            recorder = TimedRecorder(plan, plan.metadata, stack.tracking_uri, None,
                                     dict(Counter(j.kind for j in jobs)), spool_dir=root / "spool")
            recorder.tracker  # noqa: B018 -- the experiment exists before the first result
            reset_ok = reset_peak_rss()
            cpu0, start, started_at = _cpu_s(), time.perf_counter(), time.time()
            done = run_jobs(sim_trial, jobs, settings, name="cluster-sim",
                            storage_path=root / "tune", sink=recorder,
                            resources=trial_resources(plan.cfg), max_failures=r.max_failures)
            recorder.reconcile(done)
            wall, cpu = time.perf_counter() - start, _cpu_s() - cpu0
            lags = sorted(recorder.__dict__.get("lags", []))
            out = {"sim_trials": len(jobs), "sim_trials_finished": len(done),
                   **utilisation(done, gpus_of, total_gpus),
                   "sim_first_trial_s": min(m["started_at"] for _, m in done) - started_at,
                   "sim_driver_s_per_trial": cpu / len(jobs),
                   "sim_driver_peak_rss_gib": driver_peak_rss_gib(reset_ok),
                   "sim_recorder_lag_s": {"median": statistics.median(lags) if lags else None,
                                          "p95": lags[int(0.95 * (len(lags) - 1))] if lags else None,
                                          "max": lags[-1] if lags else None},
                   "sim_recorder_busy_fraction": recorder.__dict__.get("busy_s", 0.0) / wall,
                   **count_pair_runs(recorder.tracker, keys),
                   "sim_failures": recorder.failures[:5], "sim_keys": len(keys),
                   "sim_cluster": f"{args.nodes} nodes x {args.gpus_per_node} GPUs "
                                  f"({args.cpus_per_node} CPUs each), logical",
                   "sim_compression": compression, "sim_wall_s": wall,
                   "sim_ideal_s": 60 * args.minutes, "quick": bool(args.quick)}
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    return out


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_sim",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 nodes x 2 GPUs, 4 models x 4 tasks, a 4-minute ideal schedule")
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--gpus-per-node", type=int)
    parser.add_argument("--cpus-per-node", type=int,
                        help="logical CPUs per node (default 12 per GPU, as a p4d/p5 node)")
    parser.add_argument("--models", type=int, help="the first N models (every k-th) only")
    parser.add_argument("--tasks", type=int, help="the first N tasks only")
    parser.add_argument("--minutes", type=float,
                        help="length of the ideal schedule (default 4 quick, 60 full)")
    parser.add_argument("--floor-s", type=float, default=2.0,
                        help="shortest simulated trial (s): this 2-core machine spends ~0.5 s "
                             "per trial around it, which compressed trials must outlast")
    parser.add_argument("--mlflow-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.nodes = args.nodes or (2 if args.quick else 4)
    # 2 GPUs per node by default: every probe slot (4 per GPU) is a Ray actor of ~0.2 GB, and
    # 4 x 8 GPUs' 128 would not fit beside the other work of a 24 GiB machine
    args.gpus_per_node = args.gpus_per_node or 2
    args.cpus_per_node = args.cpus_per_node or 12 * args.gpus_per_node
    args.minutes = args.minutes or (4.0 if args.quick else 60.0)
    print(json.dumps(finite(run(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
