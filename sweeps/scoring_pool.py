"""A user's proxy function run on many pairs' inputs, each in a worker process under a time limit.

    outcomes = score_pairs("myproxy.py:score", fn, pairs, timeout=60, workers=1)

``score(inputs) -> float`` (:class:`selection.proxies.registry.ProxyInputs`; higher is better)
runs as a registered proxy runs in a probe trial: one BLAS thread and one torch thread, the value
``float(score(inputs))``. A pair gets a value, or a reason it has none: the function raised (its
exception's type and first line), returned something that is not a finite number (NaN, inf, a
string), took longer than ``timeout`` seconds (its worker is killed and a fresh one takes the
next pair, so a hung function costs its own pair only), or its worker died. The clock of a pair
starts when it is handed to a worker that has started and imported the function.

``workers=1`` runs one worker process on this machine (no Ray to start); ``workers=N`` runs N
Ray actors, on the local Ray or on the cluster ``RAY_ADDRESS`` names, the function shipped to
them by value (cloudpickle), so its file need not exist on the nodes.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whichmodel.errors import WhichModelError

START_TIMEOUT_S = 300.0  # a worker's start: imports of torch and the user's module


@dataclass(frozen=True)
class Pair:
    """A (model, task) pair to score; ``load()`` builds its ProxyInputs when it is its turn (a
    sweep's features are not all held in memory at once)."""

    model: str
    task: str
    load: Callable[[], Any]

    @property
    def label(self) -> str:
        return f"{self.model}@{self.task}"


@dataclass(frozen=True)
class Outcome:
    pair: Pair
    value: float | None
    seconds: float | None
    error: str | None  # why there is no value


# ------------------------------------------------------------------------ the user's function
def load_function(spec: str) -> tuple[Callable[[Any], Any], str]:
    """``MODULE:FUNCTION`` (a dotted module importable from here, the working folder included,
    or a path to a ``.py`` file) -> (the function, its name)."""
    module_ref, sep, attr = str(spec).rpartition(":")
    if not sep or not module_ref or not attr:
        raise WhichModelError(f"{spec!r}: write MODULE:FUNCTION, e.g. myproxy:score or "
                              "path/to/myproxy.py:score")
    try:
        module = _import(module_ref)
    except WhichModelError:
        raise
    except BaseException as exc:  # the user's module: any error while importing it
        raise WhichModelError(f"{spec}: cannot import {module_ref}: {_short(exc)}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise WhichModelError(f"{spec}: {module_ref} has no {attr!r}; its functions: "
                              f"{', '.join(public) or 'none'}")
    if not callable(fn):
        raise WhichModelError(f"{spec}: {attr!r} is a {type(fn).__name__}, not a function "
                              "score(inputs) -> float")
    return fn, getattr(fn, "__name__", attr)


def _import(module_ref: str):
    if module_ref.endswith(".py") or os.sep in module_ref:
        path = Path(module_ref).expanduser().resolve()
        if not path.is_file():
            raise WhichModelError(f"{module_ref}: no such file")
        name = f"whichmodel_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path:  # as `python -m` would find it
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(module_ref)


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def evaluate(fn: Callable[[Any], Any], inputs: Any) -> tuple[float | None, float, str | None]:
    """(value, seconds, None) or (None, seconds, why not), as a registered proxy is run."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            value = fn(inputs)
    except Exception as exc:  # the user's function: whatever it raises is its pair's outcome
        return None, time.perf_counter() - start, f"raised {_short(exc)}"
    seconds = time.perf_counter() - start
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None, seconds, f"returned {type(value).__name__} {str(value)[:40]!r}, not a number"
    if not math.isfinite(number):
        return None, seconds, f"returned {number}"
    return number, seconds, None


# ----------------------------------------------------------------------------- local worker
def _child_main(conn, spec: str) -> None:
    """A local worker: import the function, then score whatever arrives until None does."""
    try:
        fn, _ = load_function(spec)
    except BaseException as exc:  # reported to the parent, which names it
        conn.send(("error", _short(exc)))
        return
    conn.send(("ready", None))
    while True:
        inputs = conn.recv()
        if inputs is None:
            return
        conn.send(("done", evaluate(fn, inputs)))


class LocalWorker:
    """One process on this machine (spawned: no state shared with the caller)."""

    def __init__(self, spec: str):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_child_main, args=(child, spec), daemon=True)
        self.proc.start()
        child.close()
        if not self.conn.poll(START_TIMEOUT_S):
            self.kill()
            raise WhichModelError(f"{spec}: a worker did not start within {START_TIMEOUT_S:g} s")
        kind, message = self._recv()
        if kind != "ready":
            self.kill()
            raise WhichModelError(f"{spec}: {message}")

    def _recv(self):
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            return "died", f"its worker died (exit code {self.proc.exitcode})"

    def submit(self, inputs: Any) -> None:
        self.conn.send(inputs)

    def handle(self):
        return self.conn

    def result(self) -> tuple[float | None, float | None, str | None]:
        kind, payload = self._recv()
        return payload if kind == "done" else (None, None, payload)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        self.conn.close()

    def close(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(10)
        self.kill()

    @staticmethod
    def wait(handles: list, seconds: float) -> list:
        from multiprocessing.connection import wait

        return wait(handles, timeout=seconds)


# ------------------------------------------------------------------------------- Ray workers
class _Scorer:
    """The Ray actor's body (made remote in :class:`RayWorker`)."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn

    def ready(self) -> bool:
        return True

    def score(self, inputs: Any) -> tuple[float | None, float, str | None]:
        return evaluate(self.fn, inputs)


class RayWorker:
    """One Ray actor holding the function (sent by value)."""

    def __init__(self, fn: Callable[[Any], Any]):
        import ray

        self.actor = ray.remote(num_cpus=1)(_Scorer).remote(fn)
        try:
            ray.get(self.actor.ready.remote(), timeout=START_TIMEOUT_S)
        except Exception as exc:  # GetTimeoutError, a worker that cannot unpickle the function
            ray.kill(self.actor)
            raise WhichModelError(f"a Ray worker could not start the function: "
                                  f"{_short(exc)}") from None
        self.ref = None

    def submit(self, inputs: Any) -> None:
        self.ref = self.actor.score.remote(inputs)

    def handle(self):
        return self.ref

    def result(self) -> tuple[float | None, float | None, str | None]:
        import ray

        try:
            return ray.get(self.ref)
        except Exception as exc:  # the actor died (RayActorError) or could not run it
            return None, None, f"its worker failed: {_short(exc)}"

    def kill(self) -> None:
        import ray

        ray.kill(self.actor)

    close = kill

    @staticmethod
    def wait(handles: list, seconds: float) -> list:
        import ray

        ready, _ = ray.wait(handles, num_returns=1, timeout=seconds)
        return ready


# ----------------------------------------------------------------------------------- driving
def score_pairs(spec: str, fn: Callable[[Any], Any], pairs: Iterable[Pair], *, timeout: float,
                workers: int = 1, on_outcome: Callable[[Outcome], None] | None = None
                ) -> list[Outcome]:
    """Every pair's outcome (in the order they finish); ``on_outcome`` sees each as it comes.
    A pair whose inputs cannot be loaded gets that as its reason."""
    if workers > 1:
        from ray import cloudpickle

        from sweeps.tune_runner import init_ray

        init_ray()
        module = sys.modules.get(getattr(fn, "__module__", ""))
        if module is not None and module.__name__ not in ("__main__", "builtins"):
            cloudpickle.register_pickle_by_value(module)  # the nodes need not have its file

        def make():
            return RayWorker(fn)
    else:
        def make():
            return LocalWorker(spec)

    queue, slots, busy, out = deque(pairs), [], {}, []
    report = on_outcome or (lambda outcome: None)

    def finish(pair: Pair, value, seconds, error) -> None:
        outcome = Outcome(pair, value, seconds, error)
        out.append(outcome)
        report(outcome)

    try:
        while queue or busy:
            for i in range(workers):
                if len(slots) <= i:
                    slots.append(None)
                if i in busy or not queue:
                    continue
                pair = queue.popleft()
                try:
                    inputs = pair.load()
                except WhichModelError as exc:
                    finish(pair, None, None, f"its features cannot be used: {exc}")
                    continue
                if slots[i] is None:
                    slots[i] = make()
                slots[i].submit(inputs)
                busy[i] = (pair, time.monotonic())
            if not busy:
                continue
            deadline = min(start for _, start in busy.values()) + timeout
            handles = {slots[i].handle(): i for i in busy}
            ready = type(slots[next(iter(busy))]).wait(list(handles),
                                                      max(0.0, deadline - time.monotonic()))
            for handle in ready:
                i = handles[handle]
                pair, _ = busy.pop(i)
                value, seconds, error = slots[i].result()
                if error is not None and error.startswith("its worker"):
                    slots[i].kill()
                    slots[i] = None
                finish(pair, value, seconds, error)
            now = time.monotonic()
            for i, (pair, start) in list(busy.items()):
                if now - start >= timeout:
                    slots[i].kill()  # a hung function: its worker goes, a fresh one follows
                    slots[i] = None
                    del busy[i]
                    finish(pair, None, None, f"took longer than {timeout:g} s")
    finally:
        for slot in slots:
            if slot is not None:
                slot.close()
    return out
