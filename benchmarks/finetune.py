"""Fine-tune and orchestration benchmarks: Lightning vs raw PyTorch, Tune + MLflow overhead,
two-node speed-up and a many-small-trials sweep, measured side by side in one run.

Commands (from the repository root; the last line of stdout is one JSON object)::

    .venv/bin/python -m benchmarks.finetune            # full, ~8-15 min on 2 cores
    .venv/bin/python -m benchmarks.finetune --quick    # ~3.5 min on 2 cores (< 5)
    .venv/bin/python -m benchmarks.finetune --quick --profile-scale /tmp/scale.prof  # + cProfile

Keys of the JSON line (targets in brackets):

``lightning_over_raw_throughput`` [>= 0.9]
    Images/s of the Lightning fine-tune (``FineTuneModule`` + ``make_trainer`` + ``fit`` on a
    ``_loader`` ``DeviceBatches``) over an equivalent raw PyTorch loop (same backbone weights,
    batches, ``_sgd`` optimizer and warm-up-cosine schedule, fp32, same threads), END-TO-END:
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
``two_node_speedup`` [>= 1.7]
    Wall time of 8 CPU-bound trials (torch matmuls, 1 thread, ~3.5 s each; ``--quick`` ~2 s) on
    a 1-node, 1-CPU ``ray.cluster_utils.Cluster`` over the same sweep on a 2-node cluster (1 CPU
    each), ``run_jobs`` with ``TrialResources({"work": (1, 0)})``, timed around ``run_jobs``
    (once every node's prestarted workers have finished preloading: a warm cluster, as a
    long-running one is). ``two_node.machine_parallel_capacity_before_after`` is how
    many cores the (shared) machine actually offered: the speed-up cannot exceed it;
    ``one_node_overhead_s`` / ``two_node_overhead_s``: wall minus the trials' own work per node
    (Tune start-up, one cold actor per node, scheduling), a fixed cost that does not parallelise.
``scale_trials``, ``scale_overhead_s_per_trial`` [<= 0.3 s], ``scale_driver_peak_rss_gib``
[<= 2 GiB], ``scale_unique_finished_runs`` [== scale_trials]
    A sweep of 2,000 tiny trials (``--quick``: 500, see ``scale_note``), a ~1 ms numpy op each,
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
import contextlib
import cProfile
import dataclasses
import json
import logging
import math
import os
import pstats
import resource
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before Ray is imported anywhere: loopback addresses only (Ray otherwise resolves 127.0.0.1 to
# the host's routable IP), and the many-small-trials settings of Ray Tune's own guide
# (TUNE_MAX_PENDING_TRIALS_PG and friends).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", "2")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "300")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

_T_MODULE = time.time()  # when this module started importing (in a Ray worker: cold start)
import numpy as np  # noqa: E402
import torch  # noqa: E402

_T_TORCH = time.time() - _T_MODULE  # seconds to import numpy + torch here
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from sweeps.plan import Job, pair_key  # noqa: E402

TARGETS = {"lightning_over_raw_throughput": (">=", 0.9),
           "orchestration_overhead_fraction": ("<=", 0.05),
           "two_node_speedup": (">=", 1.7),
           "scale_overhead_s_per_trial": ("<=", 0.3),
           "scale_driver_peak_rss_gib": ("<=", 2.0)}
LOGGED_METRICS = ("fit_s", "images_per_s", "work_s", "value", "steps")
N_TRAIN, BATCH, NUM_CLASSES, LR = 800, 64, 10, 0.01
# Sizes per mode (quick, full): fine-tune steps and repetitions, target seconds of the
# orchestrated fine-tune, seconds of work per two-node trial, number of scale trials.
MODES = {True: {"steps": 300, "reps": 1, "finetune_s": 10.0, "work_s": 2.0, "trials": 500},
         False: {"steps": 300, "reps": 3, "finetune_s": 30.0, "work_s": 3.5, "trials": 2000}}
GIB = 1024 ** 3


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data and models
def _data(n: int = N_TRAIN, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC 32 px images and labels, deterministic per seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g)
    return x, torch.randint(0, NUM_CLASSES, (n,), generator=g)


def _model(arch: str, seed: int = 0):
    from lightning_modules.backbones import create_backbone

    torch.manual_seed(seed)
    backbone = create_backbone(arch)
    return backbone, nn.Linear(backbone.feature_dim, NUM_CLASSES)


class _Stamps:
    """A Lightning callback recording the time of every batch end (made lazily a Callback)."""

    @staticmethod
    def make():
        import pytorch_lightning as pl

        class Stamps(pl.Callback):
            def __init__(self):
                self.t: list[float] = []

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.t.append(time.perf_counter())

        return Stamps()


def lightning_fit(arch: str, steps: int, seed: int = 0) -> tuple[float, list[float]]:
    """The project's path: FineTuneModule + make_trainer + fit -> (wall s, batch-end stamps)."""
    from lightning_modules.training import FineTuneModule, _loader, make_trainer

    backbone, head = _model(arch, seed)
    x, y = _data(seed=seed)
    loader = _loader(x, y, BATCH, seed)
    stamps = _Stamps.make()
    start = time.perf_counter()
    module = FineTuneModule(backbone, head, LR, steps)
    trainer = make_trainer(steps)
    trainer.callbacks.append(stamps)
    trainer.fit(module, loader)
    return time.perf_counter() - start, stamps.t


def raw_fit(arch: str, steps: int, seed: int = 0) -> tuple[float, list[float]]:
    """The same fine-tune as a plain PyTorch loop (same weights, batches, optimizer, schedule)."""
    from lightning_modules.training import _loader, _sgd, set_trainable

    backbone, head = _model(arch, seed)
    x, y = _data(seed=seed)
    loader = _loader(x, y, BATCH, seed)
    start = time.perf_counter()
    set_trainable(backbone, "all")
    params = [p for p in (*backbone.parameters(), *head.parameters()) if p.requires_grad]
    cfg = _sgd(params, LR, steps)
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    backbone.train()
    head.train()
    stamps, curve, step = [], [], 0
    while step < steps:
        for images, labels in loader:
            loss = F.cross_entropy(head(backbone.features(backbone.preprocess(images))), labels)
            if step % 10 == 0 or step == steps - 1:  # as FineTuneModule's loss curve
                curve.append((step, float(loss.detach())))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            stamps.append(time.perf_counter())
            if step >= steps:
                break
    return time.perf_counter() - start, stamps


def _median_step(stamps: list[float], skip: int = 10) -> float:
    return float(np.median(np.diff(stamps[skip:])))


# --------------------------------------------------------------------------- phase 1: throughput
def _throughput_arch(arch: str, steps: int, reps: int) -> dict[str, float]:
    raw_fit(arch, 5), lightning_fit(arch, 5)  # warm-up: lazy imports, kernel set-up
    runs: dict[str, list[tuple[float, float]]] = {"raw": [], "lightning": []}
    for rep in range(reps):
        order = ("raw", "lightning") if rep % 2 == 0 else ("lightning", "raw")
        for side in order:
            wall, stamps = (raw_fit if side == "raw" else lightning_fit)(arch, steps)
            runs[side].append((wall, _median_step(stamps)))
    raw_wall, raw_step = min(w for w, _ in runs["raw"]), min(s for _, s in runs["raw"])
    l_wall, l_step = min(w for w, _ in runs["lightning"]), min(s for _, s in runs["lightning"])
    return {"raw_e2e_s": raw_wall, "lightning_e2e_s": l_wall,
            "raw_images_per_s": steps * BATCH / raw_wall,
            "lightning_images_per_s": steps * BATCH / l_wall,
            "raw_step_ms": 1000 * raw_step, "lightning_step_ms": 1000 * l_step,
            "e2e_ratio": raw_wall / l_wall, "steady_ratio": raw_step / l_step}


def phase_throughput(args) -> dict[str, Any]:
    steps, reps = MODES[args.quick]["steps"], MODES[args.quick]["reps"]
    per_arch = {}
    for arch in ("cnn", "resnet"):
        per_arch[arch] = _throughput_arch(arch, steps, reps)
        _log(f"throughput {arch}: "
             f"{json.dumps({k: round(v, 3) for k, v in per_arch[arch].items()})}")
    return {"lightning_over_raw_throughput": min(a["e2e_ratio"] for a in per_arch.values()),
            "lightning_over_raw_steady_state": min(a["steady_ratio"] for a in per_arch.values()),
            "throughput": {"steps": steps, "batch_size": BATCH, "reps": reps,
                           "threads": torch.get_num_threads(),
                           "key": "end-to-end fit wall time, worst architecture", **per_arch}}


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


class BenchSink:
    """Driver-side sink: one MLflow run per finished trial (or none when ``uri`` is None)."""

    def __init__(self, uri: str | None, experiment: str, protocol: str):
        self.uri, self.experiment, self.protocol = uri, experiment, protocol
        self.log_s, self.logged, self.errors = 0.0, 0, []
        self._tracker = None

    def __getstate__(self):
        return {**self.__dict__, "_tracker": None}

    @property
    def tracker(self):
        from sweeps.tracking import Tracker

        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.experiment)
        return self._tracker

    def on_result(self, job: Job, metrics: dict) -> None:
        if self.uri is None:
            return
        start = time.perf_counter()
        self.tracker.log_pair(job.model, job.task, self.protocol, "bench", tags={},
                              params=dict(job.params),
                              metrics={k: v for k, v in metrics.items() if k in LOGGED_METRICS})
        self.log_s += time.perf_counter() - start
        self.logged += 1

    def on_error(self, job: Job, error: str) -> None:
        self.errors.append(f"{job}: {error}")


# --------------------------------------------------------------------------- Ray plumbing
@contextlib.contextmanager
def local_ray(root: Path, num_cpus: int):
    """The project's ``init_ray`` on a private temp dir; yields the start-up seconds."""
    import ray

    from sweeps.tune_runner import init_ray

    os.environ["WHICHMODEL_RAY_TEMP_DIR"] = str(root / "r")
    start = time.perf_counter()
    try:
        init_ray(num_cpus)
        yield time.perf_counter() - start
    finally:
        ray.shutdown()


@contextlib.contextmanager
def local_cluster(root: Path, nodes: int):
    """A ``cluster_utils.Cluster`` of ``nodes`` 1-CPU nodes on loopback, the driver connected."""
    import ray
    from ray.cluster_utils import Cluster

    common = {"num_cpus": 1, "include_dashboard": False, "node_ip_address": "127.0.0.1"}
    cluster = None
    try:
        from sweeps.tune_runner import worker_system_config

        # As cluster.yaml starts its nodes: every node prestarts workers that preload torch,
        # Lightning, timm and Tune.
        cluster = Cluster(initialize_head=True,
                          head_node_args={**common, "temp_dir": str(root / f"c{nodes}h"),
                                          "_system_config": worker_system_config()})
        for i in range(nodes - 1):
            cluster.add_node(**common, temp_dir=str(root / f"c{nodes}w{i}"))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


def _timed_sweep(fn: Callable, jobs: list[Job], root: Path, name: str, sink: BenchSink,
                 kind: str, **kwargs) -> tuple[float, list[tuple[dict, dict]]]:
    from sweeps.tune_runner import TrialResources, run_jobs

    start = time.perf_counter()
    done = run_jobs(fn, jobs, None, name=name, storage_path=root / "tune", sink=sink,
                    resources=TrialResources({kind: (1, 0)}), **kwargs)
    return time.perf_counter() - start, done


def _make_sink(uri: str, experiment: str, protocol: str) -> BenchSink:
    """Experiment (and SQLite schema) created once in the driver, before the sweep."""
    sink = BenchSink(uri, experiment, protocol)
    sink.tracker  # noqa: B018 - open the store now
    return sink


# --------------------------------------------------------------------------- phase 2: overhead
@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _calibrate_steps(target_s: float, probe: int = 60) -> int:
    wall, _ = lightning_fit("cnn", probe)
    return max(probe, int(round(target_s / wall * probe)))


def phase_orchestration(args, root: Path, uri: str) -> dict[str, Any]:
    target = MODES[args.quick]["finetune_s"]
    with _threads(1):  # the trial runs with 1 thread (TrialResources cpus=1)
        steps = _calibrate_steps(target)
        job = Job("finetune", "bench-cnn", "synthetic", params={"arch": "cnn", "steps": steps})
        start = time.perf_counter()
        bare = finetune_trial(job, None)
        bare_s = time.perf_counter() - start
    from sweeps.tune_runner import settled_idle_workers

    sink = _make_sink(uri, "bench-orchestration", "finetune")
    settled_idle_workers()  # the local Ray's prestarted workers have finished preloading
    called_at = time.time()
    tune_s, done = _timed_sweep(finetune_trial, [job], root, "orchestration", sink, "finetune")
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
    _log(f"orchestration: {json.dumps(out)}")
    return {"orchestration_overhead_fraction": (tune_s - bare_s) / bare_s,
            "orchestration_overhead_fraction_warm": out.get("warm_fraction"),
            "orchestration": out}


def _warm_overhead(job: Job, bare_s: float, root: Path, uri: str) -> dict[str, float]:
    """Two trials in a row on one slot: the second runs on the reused (warm) actor. Its extra
    time over the bare call = gap after the first trial (result, MLflow write, actor reset) plus
    its own slowdown; this is what each further fine-tune of a sweep costs."""
    jobs = [dataclasses.replace(job, model=f"bench-cnn-{i}") for i in range(2)]
    sink = _make_sink(uri, "bench-orchestration", "finetune")
    _, done = _timed_sweep(finetune_trial, jobs, root, "orchestration-warm", sink, "finetune",
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
    with _threads(1):
        _burn(20)
        start = time.perf_counter()
        _burn(200)
        per_iter = (time.perf_counter() - start) / 200
    return max(1, int(target_s / per_iter))


def _parallel_capacity(iters: int) -> float:
    """Cores the machine gives right now: 2 x (one burn alone) / (two burns in parallel threads;
    torch releases the GIL). About 2 on an idle 2-core machine; the speed-up's ceiling."""
    with _threads(1):
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


def _cluster_sweep(root: Path, nodes: int, jobs: list[Job]) -> tuple[float, set[str], float]:
    from sweeps.tune_runner import settled_idle_workers

    with local_cluster(root, nodes):
        # Timed on a warm cluster, as a long-running one is: every node's prestarted workers
        # have finished preloading torch and Lightning.
        settled_idle_workers()
        sink = BenchSink(None, "", "work")
        wall, done = _timed_sweep(work_trial, jobs, root, f"two-node-{nodes}", sink, "work")
    if len(done) != len(jobs):
        raise RuntimeError(f"{nodes}-node sweep: {len(done)}/{len(jobs)} trials finished")
    work = sum(m["work_s"] for _, m in done) / len(done)
    return wall, {m["node"] for _, m in done}, work


def phase_two_node(args, root: Path) -> dict[str, Any]:
    per_trial = MODES[args.quick]["work_s"]
    iters = _calibrate_iters(per_trial)
    jobs = [Job("work", f"w{i}", params={"i": i, "iters": iters}) for i in range(8)]
    capacity = [_parallel_capacity(iters // 2)]
    one_s, _, work1 = _cluster_sweep(root, 1, jobs)
    two_s, nodes, work2 = _cluster_sweep(root, 2, jobs)
    capacity.append(_parallel_capacity(iters // 2))
    out = {"trials": len(jobs), "target_work_s": per_trial, "iters": iters,
           "machine_parallel_capacity_before_after": capacity,
           "one_node_s": one_s, "two_node_s": two_s, "nodes_used": len(nodes),
           "mean_work_s_one_node": work1, "mean_work_s_two_nodes": work2,
           # wall minus the trials' own work per node: Tune start-up, cold actors, scheduling
           "one_node_overhead_s": one_s - len(jobs) * work1,
           "two_node_overhead_s": two_s - len(jobs) / 2 * work2}
    _log(f"two-node: {json.dumps(out)}")
    return {"two_node_speedup": one_s / two_s, "two_node": out}


# --------------------------------------------------------------------------- phase 4: scale
class RssSampler:
    """Peak RSS of the driver and all its descendants, sampled every ``every_s``."""

    def __init__(self, every_s: float = 1.0):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil  # shipped with Ray (ray/thirdparty_files), importable once ray is

        me = psutil.Process()
        while not self._stop.wait(self.every_s):
            total = 0
            for p in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _driver_peak_rss_gib(reset_ok: bool) -> float:
    if reset_ok:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def _count_runs(sink: BenchSink, jobs: list[Job]) -> dict[str, int]:
    finished = Counter(r.data.tags.get("pair_key") for r in sink.tracker.search()
                       if r.info.status == "FINISHED")
    keys = [pair_key(j.model, j.task, sink.protocol) for j in jobs]
    return {"unique": sum(finished[k] == 1 for k in keys),
            "duplicates": sum(max(0, finished[k] - 1) for k in keys),
            "missing": sum(finished[k] == 0 for k in keys)}


def _profiled(path: str | None, fn: Callable, *a, **kw):
    if not path:
        return fn(*a, **kw)
    prof = cProfile.Profile()
    try:
        return prof.runcall(fn, *a, **kw)
    finally:
        prof.dump_stats(path)
        stats = pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative")
        stats.print_stats(40)


def phase_scale(args, root: Path, uri: str) -> dict[str, Any]:
    n = MODES[args.quick]["trials"]
    jobs = [Job("tiny", f"m{i:05d}", "synthetic", params={"i": i}) for i in range(n)]
    sink = _make_sink(uri, "bench-scale", "scale")
    reset_ok = _reset_peak_rss()
    with RssSampler() as sampler:
        wall, done = _profiled(args.profile_scale, _timed_sweep, tiny_trial, jobs, root, "scale",
                               sink, "tiny", max_concurrent_trials=2)
    work = sum(m.get("work_s", 0.0) for _, m in done)
    runs = _count_runs(sink, jobs)
    out = {"wall_s": wall, "sum_work_s": work, "concurrency": 2, "finished_trials": len(done),
           "mlflow_log_s_total": sink.log_s, "errors": len(sink.errors), **runs,
           "ray_tree_peak_rss_gib": sampler.peak / GIB,
           "driver_lifetime_peak_rss_gib":
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
           "rss": "driver VmHWM during the sweep" if reset_ok else "driver ru_maxrss (lifetime)",
           "overhead": "(wall - sum_work_s / concurrency) / trials"}
    _log(f"scale: {json.dumps(out)}")
    return {"scale_trials": n,
            "scale_note": (f"quick: {n} trials (full mode: {MODES[False]['trials']})"
                           if args.quick else f"full: {n} trials"),
            "scale_overhead_s_per_trial": (wall - work / 2) / n,
            "scale_driver_peak_rss_gib": _driver_peak_rss_gib(reset_ok),
            "scale_unique_finished_runs": runs["unique"], "scale": out}


# --------------------------------------------------------------------------- driver
def _machine() -> dict[str, Any]:
    import pytorch_lightning as pl

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "lightning": pl.__version__,
            "threads": torch.get_num_threads(), "loadavg": [round(v, 2) for v in os.getloadavg()],
            "note": "shared machine: timings are noisy"}


def _met(out: dict[str, Any]) -> dict[str, bool]:
    met = {}
    for key, (op, target) in TARGETS.items():
        if isinstance(out.get(key), (int, float)):
            met[key] = out[key] >= target if op == ">=" else out[key] <= target
    if "scale_unique_finished_runs" in out:
        met["scale_unique_finished_runs"] = out["scale_unique_finished_runs"] == out["scale_trials"]
    return met


def _phase(out: dict, name: str, fn: Callable, *a) -> None:
    start = time.perf_counter()
    _log(f"{name} ...")
    try:
        out.update(fn(*a))
    except Exception as exc:  # report the other phases anyway
        traceback.print_exc()
        out.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
    _log(f"{name} done in {time.perf_counter() - start:.1f}s")


def _ray_phases(out: dict, args, root: Path) -> dict:
    uri = f"sqlite:///{root}/mlflow.db"
    with local_ray(root, 2) as init_s:
        out["ray_init_s"] = init_s
        _phase(out, "orchestration", phase_orchestration, args, root, uri)
        _phase(out, "scale", phase_scale, args, root, uri)
    return {}


def run(args) -> dict[str, Any]:
    from sweeps.quiet import quiet_libraries

    quiet_libraries()
    os.environ.pop("RAY_ADDRESS", None)  # always private instances, never a shared cluster
    root = Path(tempfile.mkdtemp(prefix="wfb", dir="/tmp"))
    (root / "ray").mkdir()
    os.environ["RAY_TMPDIR"] = str(root)  # Ray's address file goes here, not /tmp/ray
    # One intra-op thread everywhere (trials get one per CPU anyway): on a shared, oversubscribed
    # machine two OpenMP threads stall at every barrier and a 16 ms step took 540 ms.
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"quick": bool(args.quick),
                           "machine": {**_machine(), "default_threads": default_threads}}
    start = time.perf_counter()
    try:
        _phase(out, "throughput", phase_throughput, args)
        _phase(out, "ray", _ray_phases, out, args, root)
        _phase(out, "two_node", phase_two_node, args, root)
    finally:
        time.sleep(1.0)  # let exiting Ray processes finish writing before the temp dir goes
        shutil.rmtree(root, ignore_errors=True)
    out["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    out["total_s"] = time.perf_counter() - start
    out["targets"] = {k: f"{op} {t}" for k, (op, t) in TARGETS.items()}
    out["met"] = _met(out)
    return out


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.finetune",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases (< 5 min)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in the driver (default 1, as in trials)")
    parser.add_argument("--profile-scale", metavar="PATH",
                        help="cProfile the scale sweep's driver, dump to PATH, top 40 to stderr")
    out = run(parser.parse_args(argv))
    sys.stdout.flush()
    print(json.dumps(_finite(out)), flush=True)
    return 1 if out.get("errors") else 0


if __name__ == "__main__":
    # Run through the importable module so Ray workers unpickle the trial functions by name.
    from benchmarks.finetune import main as _main

    sys.exit(_main())
