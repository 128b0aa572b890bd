"""Progress of a sweep or a zoo build on the terminal: trials done of total, elapsed, estimate,
and (given each trial's estimated compute, :mod:`sweeps.cost`) the compute spent and left."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

from whichmodel.durations import format_duration

#: the compute a trial's result logs (seconds): its frozen pass, proxies and fine-tunes, not its
#: loading and set-up (``time/trial``) nor the parts of them already counted (``train_eval``)
COMPUTE_KEYS = ("time/features", "time/finetune")
PROXY_KEYS = "time/proxy/"


def compute_seconds(metrics: Mapping[str, object]) -> float | None:
    """The compute seconds a trial's result logged (None: it logged none)."""
    values = [float(v) for k, v in metrics.items()
              if (k in COMPUTE_KEYS or k.startswith(PROXY_KEYS)) and isinstance(v, (int, float))]
    return sum(values) if values else None


class Progress:
    """Counts finished jobs by kind and prints pairs done of total, elapsed and an estimate.

    ``estimates``: each trial's estimated compute seconds by job key (``Job.describe()``); the
    line then adds the compute spent (what the finished trials logged) and the estimated compute
    left: the unfinished trials' estimates scaled, per kind of trial, by what the finished ones
    took over their estimates."""

    def __init__(self, total_by_kind: dict[str, int], stream=None, every_s: float = 15.0,
                 estimates: Mapping[str, float] | None = None):
        self.total = dict(total_by_kind)
        self.done = {k: 0 for k in total_by_kind}
        self.failed = 0
        self.start = time.monotonic()
        self.stream, self.every_s, self._last = stream, every_s, 0.0
        self.last: dict[str, float] = {}  # seconds from the start to the last result of a kind
        self.estimates = dict(estimates or {})
        self.left = {k: 0.0 for k in total_by_kind}  # estimated seconds of unfinished trials
        for key, seconds in self.estimates.items():
            kind = key.split(" ", 1)[0]
            self.left[kind] = self.left.get(kind, 0.0) + seconds
        self.spent = 0.0
        self.measured: dict[str, list[float]] = {}  # kind -> [spent, estimated] of finished

    def stage_seconds(self) -> dict[str, float]:
        """Seconds from the start until the last probe, and from then until the last fine-tune
        work (fine-tunes and early-stop proxies), were in."""
        probes = self.last.get("probe", 0.0)
        tunes = max(self.last.get("finetune", 0.0), self.last.get("early_stop", 0.0))
        return {"probes": probes, "finetunes": max(0.0, tunes - probes)}

    def update(self, kind: str, failed: bool = False, force: bool = False, job: str | None = None,
               seconds: float | None = None) -> None:
        """One finished (or failed) trial of ``kind``; ``job``: its key in ``estimates``,
        ``seconds``: the compute its result logged."""
        self.done[kind] = self.done.get(kind, 0) + 1
        self.failed += int(failed)
        estimate = self.estimates.get(job) if job is not None else None
        if estimate is not None:
            self.left[kind] = max(0.0, self.left.get(kind, 0.0) - estimate)
            if seconds is not None:
                pair = self.measured.setdefault(kind, [0.0, 0.0])
                pair[0] += seconds
                pair[1] += estimate
        self.spent += seconds or 0.0
        now = time.monotonic()
        self.last[kind] = now - self.start
        if force or now - self._last >= self.every_s or self.n_done == self.n_total:
            self._last = now
            print(self.line(), file=self.stream or sys.stderr, flush=True)

    @property
    def n_done(self) -> int:
        return sum(self.done.values())

    @property
    def n_total(self) -> int:
        return sum(self.total.values())

    def compute_left(self) -> float | None:
        """The unfinished trials' estimated compute, each kind's scaled by measured / estimated
        of its finished trials (all kinds' where it has none yet); None before any is in."""
        spent = sum(p[0] for p in self.measured.values())
        estimated = sum(p[1] for p in self.measured.values())
        if not self.estimates or estimated <= 0:
            return None
        overall = spent / estimated
        return sum(left * (self.measured[k][0] / self.measured[k][1]
                           if k in self.measured and self.measured[k][1] > 0 else overall)
                   for k, left in self.left.items())

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        parts = " ".join(f"{k} {self.done.get(k, 0)}/{n}" for k, n in self.total.items())
        eta = elapsed / self.n_done * (self.n_total - self.n_done) if self.n_done else float("nan")
        fail = f" | {self.failed} failed" if self.failed else ""
        left = self.compute_left()
        compute = (f" | compute {format_duration(self.spent)}"
                   + (f", ~{format_duration(left)} left" if left is not None else "")
                   if self.estimates else "")
        return (f"[whichmodel] {parts} | elapsed {_fmt(elapsed)} | "
                f"eta {_fmt(eta) if eta == eta else '?'}{compute}{fail}")


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"
