"""What the benchmarks share: private local Ray instances and clusters, a sink that logs every
finished trial as an MLflow run, peak-memory probes, and the JSON line's plumbing.

Every Ray instance here is private: no dashboard, explicit CPUs, its own temp dir under /tmp,
loopback addresses only, shut down on failure.
"""

from __future__ import annotations

import contextlib
import cProfile
import logging
import math
import os
import pstats
import resource
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sweeps.plan import Job, pair_key

LOGGED_METRICS = ("fit_s", "images_per_s", "work_s", "value", "steps")
GIB = 1024 ** 3


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)



@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
        from sweeps.tracking.client import Tracker

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


def make_sink(uri: str, experiment: str, protocol: str) -> BenchSink:
    """Experiment (and SQLite schema) created once in the driver, before the sweep."""
    sink = BenchSink(uri, experiment, protocol)
    sink.tracker  # noqa: B018 - open the store now
    return sink


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


def timed_sweep(fn: Callable, jobs: list[Job], root: Path, name: str, sink: BenchSink,
                 kind: str, settings: Any = None, **kwargs) -> tuple[float, list[tuple[dict, dict]]]:
    """``run_jobs`` of ``fn`` over ``jobs``, 1 CPU per trial; (wall seconds, finished trials)."""
    from sweeps.tune_runner import TrialResources, run_jobs

    start = time.perf_counter()
    done = run_jobs(fn, jobs, settings, name=name, storage_path=root / "tune", sink=sink,
                    resources=TrialResources({kind: (1, 0)}), **kwargs)
    return time.perf_counter() - start, done


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


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def driver_peak_rss_gib(reset_ok: bool) -> float:
    if reset_ok:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def count_runs(sink: BenchSink, jobs: list[Job]) -> dict[str, int]:
    finished = Counter(r.data.tags.get("pair_key") for r in sink.tracker.search()
                       if r.info.status == "FINISHED")
    keys = [pair_key(j.model, j.task, sink.protocol) for j in jobs]
    return {"unique": sum(finished[k] == 1 for k in keys),
            "duplicates": sum(max(0, finished[k] - 1) for k in keys),
            "missing": sum(finished[k] == 0 for k in keys)}


def profiled(path: str | None, fn: Callable, *a, **kw):
    if not path:
        return fn(*a, **kw)
    prof = cProfile.Profile()
    try:
        return prof.runcall(fn, *a, **kw)
    finally:
        prof.dump_stats(path)
        stats = pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative")
        stats.print_stats(40)


def machine() -> dict[str, Any]:
    import pytorch_lightning as pl

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "lightning": pl.__version__,
            "threads": torch.get_num_threads(), "loadavg": [round(v, 2) for v in os.getloadavg()],
            "note": "shared machine: timings are noisy"}


def phase(out: dict, name: str, fn: Callable, *a) -> None:
    start = time.perf_counter()
    log(f"{name} ...")
    try:
        out.update(fn(*a))
    except Exception as exc:  # report the other phases anyway
        traceback.print_exc()
        out.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
    log(f"{name} done in {time.perf_counter() - start:.1f}s")


def finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def random_images(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))
