"""Progress of a sweep or a zoo build on the terminal: trials done of total, elapsed, estimate."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts finished jobs by kind and prints pairs done of total, elapsed and an estimate."""

    def __init__(self, total_by_kind: dict[str, int], stream=None, every_s: float = 15.0):
        self.total = dict(total_by_kind)
        self.done = {k: 0 for k in total_by_kind}
        self.failed = 0
        self.start = time.monotonic()
        self.stream, self.every_s, self._last = stream, every_s, 0.0
        self.last: dict[str, float] = {}  # seconds from the start to the last result of a kind

    def stage_seconds(self) -> dict[str, float]:
        """Seconds from the start until the last probe, and from then until the last fine-tune
        work (fine-tunes and early-stop proxies), were in."""
        probes = self.last.get("probe", 0.0)
        tunes = max(self.last.get("finetune", 0.0), self.last.get("early_stop", 0.0))
        return {"probes": probes, "finetunes": max(0.0, tunes - probes)}

    def update(self, kind: str, failed: bool = False, force: bool = False) -> None:
        self.done[kind] = self.done.get(kind, 0) + 1
        self.failed += int(failed)
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
