"""One driver per sweep: a lease on the tracking server, renewed while the driver runs.

``whichmodel run`` and ``resume`` (and so a submitted job, which runs ``run`` on the head) take
a lease on the sweep's MLflow experiment before their first trial; ``whichmodel recommend``
takes one on the keys it runs. A lease is an experiment tag ``whichmodel.lease.<token>`` whose
value (JSON) says who holds it -- kind (``sweep`` or ``recommend``), label, owner, host, pid,
``since``, ``expires`` -- and which (model, task, protocol, settings hash) keys it runs. A
background thread renews ``expires`` every :data:`RENEW_S` seconds; the driver deletes the tag
when its trials are done. The tracking server is the one place every driver of a sweep reaches
(a laptop, a head node, a resumed head node), which is why the lease lives there.

Rules, between leases whose keys overlap:

- a second sweep driver is refused with a one-line error naming the holder and since when
  (exit 2, nothing trained or written); ``--force`` takes the lease anyway (for a user who
  knows the holder is gone);
- a lease that has expired, or whose process is gone (same host, its pid not running), is taken
  over, and the new driver says so;
- ``recommend`` and a sweep do not refuse each other: the later of the two leaves the keys the
  earlier one runs to it, waits for their runs, and runs only those the earlier one leaves
  unfinished when its lease ends.

MLflow has no compare-and-set, so a lease is taken the way Fischer's mutual exclusion takes a
lock: read the leases, write one's own, wait :data:`SETTLE_S`, read again; of two drivers that
both wrote, both see both leases, and the earlier ``(since, token)`` wins. This holds while a
write lands within :data:`MAX_WRITE_S` of the read before it; a driver whose write took longer
withdraws its lease and tries again. The recorder's look-up of a key before it logs stays as a
second guard.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from whichmodel.errors import WhichModelError
from whichmodel.uri import redact_uri

TAG_PREFIX = "whichmodel.lease."
TTL_S = 120.0  # a lease not renewed for this long is dead (its driver was killed)
RENEW_S = 20.0  # renewals: several per TTL, so a server outage of a minute costs nothing
SETTLE_S = 2.0  # the wait between writing one's lease and reading the others again
MAX_WRITE_S = 1.0  # a read-then-write slower than this withdraws (SETTLE_S >= 2 * MAX_WRITE_S)
ATTEMPTS = 5
MAX_CLAIM_CHARS = 19_000  # MLflow keeps experiment tag values up to 20,000 characters
POLL_S = 5.0  # how often a waiting driver looks at the keys another one runs

Key = tuple[str, str, str, str]  # (model, task, protocol, protocol hash)


class LeaseHeld(WhichModelError):
    """Another live driver runs the same sweep (one line, exit code 2)."""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from Linux's /proc; None
    where there is no such process or no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return None


def _this_process_start() -> str | None:
    stat = _proc_stat(os.getpid())
    return None if stat is None else stat[1]


def _process_gone(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` of this host is gone: no such process, a zombie (killed, not yet
    reaped), or another process that reuses its id (another start time)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        pass
    stat = _proc_stat(pid)
    if stat is None:  # vanished since os.kill (where there is a /proc to tell)
        return os.path.isdir("/proc/self")
    state, start = stat
    return state == "Z" or (started is not None and str(started) != start)


@dataclass
class Holder:
    """A lease as its tag says."""

    tag: str
    token: str
    kind: str
    label: str
    owner: str
    host: str
    pid: int
    since: float
    expires: float
    claim: Any  # "*" or [[models, tasks, ["protocol@hash", ...]], ...]
    started: str | None = None  # the process's start time (Linux), against pid reuse

    @classmethod
    def parse(cls, tag: str, value: str) -> Holder | None:
        try:
            d = json.loads(value)
            return cls(tag, str(d["token"]), str(d["kind"]), str(d["label"]), str(d["owner"]),
                       str(d["host"]), int(d["pid"]), float(d["since"]), float(d["expires"]),
                       d["claim"], d.get("started"))
        except (ValueError, KeyError, TypeError):
            return None

    def value(self) -> str:
        return json.dumps({"token": self.token, "kind": self.kind, "label": self.label,
                           "owner": self.owner, "host": self.host, "pid": self.pid,
                           "since": self.since, "expires": self.expires, "claim": self.claim,
                           "started": self.started}, separators=(",", ":"))

    def dead(self, now: float) -> str | None:
        """Why the lease is dead (expired, its process gone), or None while it lives."""
        if self.expires <= now:
            return f"expired {_ago(now - self.expires)} ago"
        if self.host == socket.gethostname() and _process_gone(self.pid, self.started):
            return f"its process {self.pid} on {self.host} is gone"
        return None

    def covers(self, keys: Iterable[Key]) -> set[Key]:
        if self.claim == "*":
            return set(keys)
        out = set()
        for models, tasks, protocols in self.claim:
            ms, ts, ps = set(models), set(tasks), set(protocols)
            out |= {k for k in keys if k[0] in ms and k[1] in ts and f"{k[2]}@{k[3]}" in ps}
        return out

    def order(self) -> tuple[float, str]:
        return (self.since, self.token)

    def describe(self) -> str:
        return (f"{self.label} by {self.owner}@{self.host} (pid {self.pid}) since "
                f"{_clock(self.since)}")


def claim_of(keys: Iterable[Key]) -> Any:
    """The keys as products of (models, tasks, protocols): one per protocol for a whole sweep or
    a recommend's keys, per (protocol, task) otherwise; ``"*"`` (every key of the experiment)
    when even that is too long for a tag."""
    by_protocol: dict[str, dict[str, set[str]]] = {}
    for m, t, p, h in keys:
        by_protocol.setdefault(f"{p}@{h}", {}).setdefault(t, set()).add(m)
    claim = []
    for protocol, tasks in sorted(by_protocol.items()):
        models = {m for ms in tasks.values() for m in ms}
        if all(ms == models for ms in tasks.values()):
            claim.append([sorted(models), sorted(tasks), [protocol]])
        else:
            claim += [[sorted(ms), [t], [protocol]] for t, ms in sorted(tasks.items())]
    return claim if len(json.dumps(claim)) <= MAX_CLAIM_CHARS else "*"


@dataclass
class Lease:
    """A driver's lease on ``keys`` of an experiment (module docstring): :meth:`acquire`, then
    :meth:`release` (or use it as a context manager)."""

    uri: str
    experiment_id: str
    experiment: str
    kind: str  # "sweep" or "recommend"
    label: str
    keys: list[Key]
    force: bool = False
    stream: Any = None
    held: set[Key] = field(default_factory=set)  # keys an earlier live lease runs
    mine: Holder | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(self.uri)
        self.stream = self.stream or sys.stderr
        self.keys = list(dict.fromkeys(self.keys))

    # -- reading and writing the tags -------------------------------------------------------
    def holders(self) -> list[Holder]:
        """Every lease of the experiment but this driver's own."""
        tags = self.client.get_experiment(self.experiment_id).tags
        found = [Holder.parse(k, v) for k, v in tags.items() if k.startswith(TAG_PREFIX)]
        return [h for h in found if h is not None and (self.mine is None
                                                        or h.token != self.mine.token)]

    def _write(self, holder: Holder) -> None:
        self.client.set_experiment_tag(self.experiment_id, holder.tag, holder.value())

    def _delete(self, tag: str) -> None:
        with contextlib.suppress(Exception):  # gone already: someone else removed it
            self.client.delete_experiment_tag(self.experiment_id, tag)

    def _say(self, text: str) -> None:
        print(f"[whichmodel] {text}", file=self.stream, flush=True)

    # -- taking it ----------------------------------------------------------------------------
    def acquire(self) -> set[Key]:
        """Take the lease; returns the keys an earlier live lease runs (to wait for), after a
        :class:`LeaseHeld` for a sweep that another live sweep driver runs."""
        for attempt in range(ATTEMPTS):
            if self._attempt():
                self._thread = threading.Thread(target=self._renew, daemon=True,
                                                name=f"whichmodel-lease-{self.experiment}")
                self._thread.start()
                return self.held
            time.sleep(random.uniform(0.5, 1.5) * SETTLE_S * (attempt + 1))
        raise LeaseHeld(f"experiment {self.experiment!r} at {redact_uri(self.uri)}: could not "
                        f"take the lease in {ATTEMPTS} tries (the tracking server took over "
                        f"{MAX_WRITE_S:g} s to write a tag each time); try again")

    def _attempt(self) -> bool:
        since = time.time()
        others, dead = self._overlapping(self.holders(), since)
        if self.kind == "sweep":
            self._refuse_or_force([h for h in others if h.kind == "sweep"])
        token = uuid.uuid4().hex
        self.mine = Holder(TAG_PREFIX + token, token, self.kind, self.label, _owner(),
                           socket.gethostname(), os.getpid(), since, since + TTL_S,
                           claim_of(self.keys), _this_process_start())
        self._write(self.mine)
        if time.time() - since > MAX_WRITE_S:  # too slow to be sure: withdraw, try again
            self._delete(self.mine.tag)
            self.mine = None
            return False
        time.sleep(SETTLE_S)
        now = time.time()
        earlier = [h for h in self._overlapping(self.holders(), now)[0]
                   if h.order() < self.mine.order()]
        if self.kind == "sweep":
            rivals = [h for h in earlier if h.kind == "sweep"]
            if rivals and not self.force:
                self._delete(self.mine.tag)
                self.mine = None
                raise self._held(rivals[0])
            earlier = [h for h in earlier if h.kind != "sweep"]
        for h, why in dead:  # taken over once this driver holds the lease, not before
            self._delete(h.tag)
            self._say(f"took over the lease of {h.describe()}: {why}")
        self.held = set().union(*(h.covers(self.keys) for h in earlier)) if earlier else set()
        return True

    def _overlapping(self, holders: list[Holder], now: float
                     ) -> tuple[list[Holder], list[tuple[Holder, str]]]:
        """(live, dead with why) among ``holders`` that share a key with this lease."""
        live, dead = [], []
        for h in holders:
            if h.covers(self.keys):
                why = h.dead(now)
                if why is None:
                    live.append(h)
                else:
                    dead.append((h, why))
        return live, dead

    def _refuse_or_force(self, rivals: list[Holder]) -> None:
        if rivals and not self.force:
            raise self._held(rivals[0])
        for h in rivals:
            self._delete(h.tag)
            self._say(f"--force: took the lease of {h.describe()}, which looked alive "
                      f"(renewed until {_clock(h.expires)})")

    def _held(self, holder: Holder) -> LeaseHeld:
        return LeaseHeld(
            f"{holder.label} is already running: {holder.owner}@{holder.host} (pid "
            f"{holder.pid}) has held its lease since {_clock(holder.since)} (experiment "
            f"{self.experiment!r} at {redact_uri(self.uri)}, renewed until "
            f"{_clock(holder.expires)}); wait for it to finish, or pass --force if you know "
            "that driver is gone")

    # -- keeping and giving it back -----------------------------------------------------------
    def _renew(self) -> None:
        warned = False
        while not self._stop.wait(RENEW_S):
            mine = self.mine
            if mine is None:
                return
            try:
                tags = self.client.get_experiment(self.experiment_id).tags
                if mine.tag not in tags:
                    if not warned:
                        self._say(f"warning: the lease of {mine.label} was taken by another "
                                  "driver (--force); this one goes on, and each key is still "
                                  "logged once")
                        warned = True
                    continue
                mine.expires = time.time() + TTL_S
                self._write(mine)
            except Exception:  # noqa: BLE001 -- the server is away: renew on the next tick
                continue

    def holders_of(self, keys: Iterable[Key]) -> list[Holder]:
        """The live leases, earlier than this one, that run any of ``keys`` (re-read now)."""
        keys = list(keys)
        now = time.time()
        return [h for h in self.holders() if h.covers(keys) and h.dead(now) is None
                and (self.mine is None or h.order() < self.mine.order())]

    def release(self) -> None:
        """Stop renewing and delete the tag: one quick try (a server that is away lets the
        lease expire instead of holding the command up with MLflow's minutes of retries)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.mine is not None:
            with _quick_requests():
                self._delete(self.mine.tag)
            self.mine = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def refuse_if_held(uri: str, experiment: str, label: str, keys: list[Key]) -> None:
    """A sweep driver's first look, writing nothing (not even a local store that is not there
    yet): :class:`LeaseHeld` when a live sweep lease of the experiment runs any of ``keys``, so
    a second driver stops before it builds a cache or opens the experiment."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        return
    exp = MlflowClient(uri).get_experiment_by_name(experiment)
    if exp is None:
        return
    look = Lease(uri, exp.experiment_id, experiment, "sweep", label, keys)
    rivals = [h for h in look._overlapping(look.holders(), time.time())[0] if h.kind == "sweep"]
    if rivals:
        raise look._held(rivals[0])


@contextlib.contextmanager
def _quick_requests():
    added = {k: v for k, v in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
                               ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")) if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _owner() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 -- no user name in this environment
        return "unknown"


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
