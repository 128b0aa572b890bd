"""Fine-tune and orchestration benchmarks: Lightning vs raw PyTorch, Tune + MLflow overhead,
two-node speed-up and a many-small-trials sweep, measured side by side in one run.

Commands (from the repository root; the last line of stdout is one JSON object)::

    .venv/bin/python -m benchmarks.finetune            # full, ~25 min on 2 cores
    .venv/bin/python -m benchmarks.finetune --quick    # ~8 min on 2 cores
    .venv/bin/python -m benchmarks.finetune --quick --only two_node   # one phase (or several)
    .venv/bin/python -m benchmarks.finetune --quick --profile-scale /tmp/scale.prof  # + cProfile

Keys of the JSON line (targets in brackets):

``lightning_over_raw_throughput`` [>= 0.9]
    Images/s of the Lightning fine-tune (``FineTuneModule`` + ``make_trainer`` + ``fit`` on a
    ``batch_loader`` ``DeviceBatches``) over an equivalent raw PyTorch loop (same backbone weights,
    batches, ``sgd_with_schedule`` optimizer and warm-up-cosine schedule, fp32, same threads), END-TO-END:
    Lightning's wall time includes module and Trainer construction and ``fit()``; the raw one
    its optimizer construction and loop. 300 steps at batch 64 on 800 synthetic 32 px images, per
    architecture (``cnn``, ``resnet``), 1 torch thread (``--threads``); best of ``reps``
    (quick 1, full 3) alternating runs per side, after one untimed warm-up of each side
    (one-off imports are not counted). The key is the WORST
    architecture. ``lightning_over_raw_steady_state`` is the same ratio on the median step time
    (time between consecutive batch ends, first 10 steps skipped). Details in ``throughput``.
``orchestration_overhead_fraction`` [<= 0.05]
    (Tune wall - bare wall) / bare wall for one fine-tune (``cnn``, 1 thread, steps calibrated so
    the bare call takes ~30 s; ``--quick``: ~10 s): the bare call runs the trial function in the
    driver; the Tune side is ``run_jobs`` with ``TrialResources({"finetune": (1, 0)})`` and a sink
    that logs an MLflow run (``Tracker.log_pair``, local SQLite), timed from just before
    ``run_jobs`` to its return with Ray already started (``ray_init_s`` separately) and its
    prestarted workers done preloading torch, Lightning, timm and Tune
    (``worker_system_config``), as a sweep's first trial finds them: a new actor, a warm
    process.
    ``orchestration`` breaks it down: ``start_latency_s`` (run_jobs call -> trial function
    starts; of which ``tune_until_worker_imports_s`` until the worker starts importing this
    module, and ``worker_torch_import_s``), ``worker_lightning_import_s`` (first Lightning import
    inside the trial), ``fit_delta_s`` (fit in the worker minus in the driver), ``finish_s``
    (trial function returns -> run_jobs returns, incl. the MLflow write ``mlflow_log_s``).
    ``orchestration_overhead_fraction_warm`` (info): the same for a second trial on a reused
    actor (``reuse_actors=True``), i.e. what each further fine-tune of a sweep costs.
``finetune_efficiency`` [>= 0.8], ``finetune_efficiency_per_run``
    The share of the quickstart's fine-tune trials' wall time spent inside training steps and
    evaluation, the trial layout it uses (``per_pair``) and the one it used before (``per_run``)
    side by side: :mod:`benchmarks.finetune_efficiency`.
``two_node_speedup_min`` [>= 1.8], ``two_node_speedup`` [>= 1.7]
    Wall time of 8 CPU-bound trials (torch matmuls, 1 thread, ~3.5 s each; ``--quick`` ~2 s) on
    a 1-node, 1-CPU ``ray.cluster_utils.Cluster`` over the same sweep on a 2-node cluster (1 CPU
    each), ``run_jobs`` with ``TrialResources({"work": (1, 0)})``, timed around ``run_jobs``
    (once every node's prestarted workers have finished preloading: a warm cluster, as a
    long-running one is). The two-node sweep runs 10 times in a row on one cluster: the key
    ``two_node_speedup_min`` is the worst of the 10, ``two_node_speedup`` their median;
    ``two_node.phases_on_one_node_only`` counts sweeps that put every trial on one node.
    ``two_node.machine_parallel_capacity_before_after`` is how many cores the (shared) machine
    actually offered: the speed-up cannot exceed it; ``overhead_s`` of each sweep: wall minus
    the trials' own work per node (Tune start-up, scheduling), a fixed cost that does not
    parallelise.
``scale_trials``, ``scale_overhead_s_per_trial`` [<= 0.05 s], ``scale_driver_peak_rss_gib``
[<= 2 GiB], ``scale_unique_finished_runs`` [== scale_trials]
    A sweep of 10,000 tiny trials (``--quick``: 2,000, see ``scale_note``), a ~1 ms numpy op each,
    on local Ray with 2 CPUs, ``max_concurrent_trials=2``, every trial logged by the driver-side
    sink as one MLflow run with a unique (model, task) key. Overhead per trial is
    (wall - sum(trial work) / 2) / trials. Peak RSS is the driver process's own high-water mark
    (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the sweep, so earlier phases
    do not count; children excluded, as Ray's processes are not the driver's memory);
    ``scale.ray_tree_peak_rss_gib`` samples the driver plus all its descendant processes (GCS,
    raylet, workers) every second, and ``scale.driver_lifetime_peak_rss_gib`` is
    ``ru_maxrss`` of the whole benchmark. Unique finished runs counts keys with exactly one
    FINISHED run (``MlflowClient.search_runs``); ``scale.duplicates`` / ``scale.missing`` the rest.

Also ``machine`` (cpus, torch, threads, load average), ``quick``, ``targets``, ``met`` and
``errors`` (a phase that raised). Every Ray instance is private: no dashboard, explicit CPUs,
its own temp dir under /tmp (removed at the end), loopback addresses only, shut down on failure.
The machine may be shared: timings are noisy, compare runs with ``machine.loadavg``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

_T_MODULE = time.time()  # when this module started importing (in a Ray worker: cold start)
import numpy as np  # noqa: E402
import torch  # noqa: E402

_T_TORCH = time.time() - _T_MODULE  # seconds to import numpy + torch here

from benchmarks.finetune_efficiency import phase_efficiency  # noqa: E402
from benchmarks.finetune_throughput import BATCH, lightning_fit, phase_throughput  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    BenchSink,
    RssSampler,
    count_runs,
    driver_peak_rss_gib,
    finite,
    local_cluster,
    local_ray,
    log,
    machine,
    make_sink,
    phase,
    profiled,
    reset_peak_rss,
    threads,
    timed_sweep,
)
from sweeps.plan import Job  # noqa: E402
from sweeps.tune_runner import prepare_ray  # noqa: E402

TARGETS = {"lightning_over_raw_throughput": (">=", 0.9),
           "orchestration_overhead_fraction": ("<=", 0.05),
           "finetune_efficiency": (">=", 0.8),
           "two_node_speedup": (">=", 1.7),
           "two_node_speedup_min": (">=", 1.8),
           "scale_overhead_s_per_trial": ("<=", 0.05),
           "scale_driver_peak_rss_gib": ("<=", 2.0)}
# Sizes per mode (quick, full): fine-tune steps and repetitions, target seconds of the
# orchestrated fine-tune, seconds of work per two-node trial, consecutive two-node phases, number
# of scale trials.
MODES = {True: {"finetune_s": 10.0, "work_s": 2.0, "phases": 10,
                "trials": 2000},
         False: {"finetune_s": 30.0, "work_s": 3.5, "phases": 10,
                 "trials": 10000}}
GIB = 1024 ** 3


# --------------------------------------------------------------------------- trial functions
def finetune_trial(job: Job, settings: Any, report=None) -> dict[str, float]:
    """A fine-tune trial (the same call runs bare in the driver and inside Tune)."""
    started = time.time()
    import pytorch_lightning  # noqa: F401 - timed: free in the driver, seconds in a cold worker

    import lightning_modules.training  # noqa: F401

    imported = time.time()
    steps = int(job.params["steps"])
    wall, _ = lightning_fit(job.params["arch"], steps, int(job.params.get("seed", 0)))
    return {"fit_s": wall, "images_per_s": steps * BATCH / wall,
            "steps": steps, "started_at": started, "ended_at": time.time(),
            "lightning_import_s": imported - started, "torch_import_s": _T_TORCH,
            "module_import_at": _T_MODULE}


def _burn(iters: int) -> float:
    a = torch.randn(256, 256, generator=torch.Generator().manual_seed(0)) / 16
    b = a.clone()
    for _ in range(iters):
        b = torch.tanh(a @ b)
    return float(b.sum())


def work_trial(job: Job, settings: Any, report=None) -> dict[str, Any]:
    """CPU-bound work of a fixed size, one thread; reports the node it ran on."""
    import ray

    torch.set_num_threads(1)
    start = time.perf_counter()
    value = _burn(int(job.params["iters"]))
    return {"work_s": time.perf_counter() - start, "value": value,
            "node": ray.get_runtime_context().get_node_id()}


def tiny_trial(job: Job, settings: Any, report=None) -> dict[str, float]:
    """A few milliseconds of numpy."""
    start = time.perf_counter()
    rng = np.random.default_rng(int(job.params["i"]))
    value = float(np.linalg.svd(rng.random((48, 48)), compute_uv=False)[0])
    return {"work_s": time.perf_counter() - start, "value": value}


# --------------------------------------------------------------------------- phase 2: overhead
def _calibrate_steps(target_s: float, probe: int = 60) -> int:
    wall, _ = lightning_fit("cnn", probe)
    return max(probe, int(round(target_s / wall * probe)))


def phase_orchestration(args, root: Path, uri: str) -> dict[str, Any]:
    target = MODES[args.quick]["finetune_s"]
    with threads(1):  # the trial runs with 1 thread (TrialResources cpus=1)
        steps = _calibrate_steps(target)
        job = Job("finetune", "bench-cnn", "synthetic", params={"arch": "cnn", "steps": steps})
        start = time.perf_counter()
        bare = finetune_trial(job, None)
        bare_s = time.perf_counter() - start
    from sweeps.tune_runner import settled_idle_workers

    sink = make_sink(uri, "bench-orchestration", "finetune")
    settled_idle_workers()  # the local Ray's prestarted workers have finished preloading
    called_at = time.time()
    tune_s, done = timed_sweep(finetune_trial, [job], root, "orchestration", sink, "finetune")
    returned_at = called_at + tune_s
    m = done[0][1] if done else {}
    out = {"target_s": target, "steps": steps, "bare_s": bare_s, "tune_s": tune_s,
           "bare_fit_s": bare["fit_s"], "trial_fit_s": m.get("fit_s"),
           "mlflow_log_s": sink.log_s, "runs_logged": sink.logged, "errors": sink.errors}
    if m:
        out.update(start_latency_s=m["started_at"] - called_at,
                   tune_until_worker_imports_s=m["module_import_at"] - called_at,
                   worker_torch_import_s=m["torch_import_s"],
                   worker_lightning_import_s=m["lightning_import_s"],
                   fit_delta_s=m["fit_s"] - bare["fit_s"], finish_s=returned_at - m["ended_at"])
    out.update(_warm_overhead(job, bare_s, root, uri))
    log(f"orchestration: {json.dumps(out)}")
    return {"orchestration_overhead_fraction": (tune_s - bare_s) / bare_s,
            "orchestration_overhead_fraction_warm": out.get("warm_fraction"),
            "orchestration": out}


def _warm_overhead(job: Job, bare_s: float, root: Path, uri: str) -> dict[str, float]:
    """Two trials in a row on one slot: the second runs on the reused (warm) actor. Its extra
    time over the bare call = gap after the first trial (result, MLflow write, actor reset) plus
    its own slowdown; this is what each further fine-tune of a sweep costs."""
    jobs = [dataclasses.replace(job, model=f"bench-cnn-{i}") for i in range(2)]
    sink = make_sink(uri, "bench-orchestration", "finetune")
    _, done = timed_sweep(finetune_trial, jobs, root, "orchestration-warm", sink, "finetune",
                           max_concurrent_trials=1)
    if len(done) != 2:
        return {}
    (_, a), (_, b) = sorted(done, key=lambda d: d[1]["started_at"])
    gap = b["started_at"] - a["ended_at"]
    extra = gap + (b["ended_at"] - b["started_at"]) - bare_s
    return {"warm_gap_s": gap, "warm_second_trial_fn_s": b["ended_at"] - b["started_at"],
            "warm_lightning_import_s": b["lightning_import_s"], "warm_fraction": extra / bare_s}


# --------------------------------------------------------------------------- phase 3: two nodes
def _calibrate_iters(target_s: float) -> int:
    with threads(1):
        _burn(20)
        start = time.perf_counter()
        _burn(200)
        per_iter = (time.perf_counter() - start) / 200
    return max(1, int(target_s / per_iter))


def _parallel_capacity(iters: int) -> float:
    """Cores the machine gives right now: 2 x (one burn alone) / (two burns in parallel threads;
    torch releases the GIL). About 2 on an idle 2-core machine; the speed-up's ceiling."""
    with threads(1):
        start = time.perf_counter()
        _burn(iters)
        one = time.perf_counter() - start
        pair = [threading.Thread(target=_burn, args=(iters,)) for _ in range(2)]
        start = time.perf_counter()
        for t in pair:
            t.start()
        for t in pair:
            t.join()
        return 2 * one / (time.perf_counter() - start)


def _cluster_sweeps(root: Path, nodes: int, jobs: list[Job], phases: int) -> list[dict]:
    """``phases`` consecutive sweeps of ``jobs`` on one warm cluster of ``nodes`` nodes."""
    from sweeps.tune_runner import settled_idle_workers

    out = []
    with local_cluster(root, nodes):
        # Timed on a warm cluster, as a long-running one is: every node's prestarted workers
        # have finished preloading torch and Lightning.
        settled_idle_workers()
        for k in range(phases):
            sink = BenchSink(None, "", "work")
            wall, done = timed_sweep(work_trial, jobs, root, f"two-node-{nodes}-{k}", sink,
                                     "work")
            if len(done) != len(jobs):
                raise RuntimeError(f"{nodes}-node sweep {k}: {len(done)}/{len(jobs)} trials "
                                   "finished")
            work = sum(m["work_s"] for _, m in done) / len(done)
            per_node = Counter(m["node"] for _, m in done)
            out.append({"wall_s": wall, "mean_work_s": work,
                        "trials_per_node": sorted(per_node.values(), reverse=True),
                        "overhead_s": wall - len(jobs) / nodes * work})
    return out


def phase_two_node(args, root: Path) -> dict[str, Any]:
    per_trial, phases = MODES[args.quick]["work_s"], MODES[args.quick]["phases"]
    iters = _calibrate_iters(per_trial)
    jobs = [Job("work", f"w{i}", params={"i": i, "iters": iters}) for i in range(8)]
    capacity = [_parallel_capacity(iters // 2)]
    one, = _cluster_sweeps(root, 1, jobs, 1)
    two = _cluster_sweeps(root, 2, jobs, phases)
    capacity.append(_parallel_capacity(iters // 2))
    speedups = [one["wall_s"] / p["wall_s"] for p in two]
    out = {"trials": len(jobs), "target_work_s": per_trial, "iters": iters, "phases": phases,
           "machine_parallel_capacity_before_after": capacity,
           "one_node": one, "two_node_phases": two, "speedups": speedups,
           "phases_on_one_node_only": sum(len(p["trials_per_node"]) < 2 for p in two)}
    log(f"two-node: {json.dumps(out)}")
    return {"two_node_speedup": float(np.median(speedups)),
            "two_node_speedup_min": min(speedups), "two_node": out}


# --------------------------------------------------------------------------- phase 4: scale
def phase_scale(args, root: Path, uri: str) -> dict[str, Any]:
    n = MODES[args.quick]["trials"]
    jobs = [Job("tiny", f"m{i:05d}", "synthetic", params={"i": i}) for i in range(n)]
    sink = make_sink(uri, "bench-scale", "scale")
    reset_ok = reset_peak_rss()
    with RssSampler() as sampler:
        wall, done = profiled(args.profile_scale, timed_sweep, tiny_trial, jobs, root, "scale",
                               sink, "tiny", max_concurrent_trials=2)
    work = sum(m.get("work_s", 0.0) for _, m in done)
    runs = count_runs(sink, jobs)
    out = {"wall_s": wall, "sum_work_s": work, "concurrency": 2, "finished_trials": len(done),
           "mlflow_log_s_total": sink.log_s, "errors": len(sink.errors), **runs,
           "ray_tree_peak_rss_gib": sampler.peak / GIB,
           "driver_lifetime_peak_rss_gib":
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
           "rss": "driver VmHWM during the sweep" if reset_ok else "driver ru_maxrss (lifetime)",
           "overhead": "(wall - sum_work_s / concurrency) / trials"}
    log(f"scale: {json.dumps(out)}")
    return {"scale_trials": n,
            "scale_note": (f"quick: {n} trials (full mode: {MODES[False]['trials']})"
                           if args.quick else f"full: {n} trials"),
            "scale_overhead_s_per_trial": (wall - work / 2) / n,
            "scale_driver_peak_rss_gib": driver_peak_rss_gib(reset_ok),
            "scale_unique_finished_runs": runs["unique"], "scale": out}


# --------------------------------------------------------------------------- driver
def _met(out: dict[str, Any]) -> dict[str, bool]:
    met = {}
    for key, (op, target) in TARGETS.items():
        if isinstance(out.get(key), (int, float)):
            met[key] = out[key] >= target if op == ">=" else out[key] <= target
    if "scale_unique_finished_runs" in out:
        met["scale_unique_finished_runs"] = out["scale_unique_finished_runs"] == out["scale_trials"]
    return met


def _ray_phases(out: dict, args, root: Path) -> dict:
    uri = f"sqlite:///{root}/mlflow.db"
    with local_ray(root, 2) as init_s:
        out["ray_init_s"] = init_s
        if "orchestration" in args.only:
            phase(out, "orchestration", phase_orchestration, args, root, uri)
        if "scale" in args.only:
            phase(out, "scale", phase_scale, args, root, uri)
    return {}


PHASES = ("throughput", "orchestration", "efficiency", "scale", "two_node")


def run(args) -> dict[str, Any]:
    from whichmodel.quiet import quiet_libraries

    quiet_libraries()
    os.environ.pop("RAY_ADDRESS", None)  # always private instances, never a shared cluster
    root = Path(tempfile.mkdtemp(prefix="wfb", dir="/tmp"))
    (root / "ray").mkdir()
    os.environ["RAY_TMPDIR"] = str(root)  # Ray's address file goes here, not /tmp/ray
    # One intra-op thread everywhere (trials get one per CPU anyway): on a shared, oversubscribed
    # machine two OpenMP threads stall at every barrier and a 16 ms step took 540 ms.
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"quick": bool(args.quick), "phases": list(args.only),
                           "machine": {**machine(), "default_threads": default_threads}}
    start = time.perf_counter()
    try:
        if "throughput" in args.only:
            phase(out, "throughput", phase_throughput, args)
        if {"orchestration", "scale"} & set(args.only):
            phase(out, "ray", _ray_phases, out, args, root)
        if "efficiency" in args.only:
            phase(out, "efficiency", phase_efficiency, args, root)
        if "two_node" in args.only:
            phase(out, "two_node", phase_two_node, args, root)
    finally:
        time.sleep(1.0)  # let exiting Ray processes finish writing before the temp dir goes
        shutil.rmtree(root, ignore_errors=True)
    out["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    out["total_s"] = time.perf_counter() - start
    out["targets"] = {k: f"{op} {t}" for k, (op, t) in TARGETS.items()}
    out["met"] = _met(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.finetune",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases")
    parser.add_argument("--only", nargs="+", choices=PHASES, default=list(PHASES),
                        help="run only these phases")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in the driver (default 1, as in trials)")
    parser.add_argument("--profile-scale", metavar="PATH",
                        help="cProfile the scale sweep's driver, dump to PATH, top 40 to stderr")
    args = parser.parse_args(argv)
    # Before Ray starts: whichmodel's Ray environment (sweeps.tune_runner.RAY_ENV), plus the
    # many-small-trials setting of Ray Tune's guide for this benchmark's 2 slots.
    prepare_ray()
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "2")
    out = run(args)
    sys.stdout.flush()
    print(json.dumps(finite(out)), flush=True)
    return 1 if out.get("errors") else 0


if __name__ == "__main__":
    # Run through the importable module so Ray workers unpickle the trial functions by name.
    from benchmarks.finetune import main as _main

    sys.exit(_main())
