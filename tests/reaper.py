"""Run a command so that every process it starts can be stopped by PID, the daemons it leaves
behind included (Ray's raylet and GCS outlive a SIGKILLed driver).

    python -m tests.reaper CMD [ARG ...]
    proc = reaped([CMD, ...], stdout=...)   # from a test; stop(proc) kills the whole tree

This process becomes a *child subreaper* (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``): a process
its command starts that loses its parent is re-parented here, not to init, so it stays a
descendant. On SIGTERM, or when the command exits, every descendant is found by walking
``/proc``'s parent links from this PID and SIGKILLed by PID; nothing else is touched. Exit code:
the command's, or 137 after a SIGTERM (a killed driver, as the tests want it).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def descendants(root: int) -> list[int]:
    """PIDs whose parent chain leads to ``root`` (read from /proc now)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parent[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    out, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, pp in parent.items() if pp == pid]
        out += children
        frontier += children
    return out


def kill_descendants() -> None:
    """SIGKILL every descendant by PID, reap them, until none is left (bounded)."""
    me = os.getpid()
    for _ in range(50):
        pids = descendants(me)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    time.sleep(0.05)
            except ChildProcessError:
                break


def reaped(cmd: list[str], **kw) -> subprocess.Popen:
    """``cmd`` under this module, from a test: it and every process it starts are stopped by
    PID when it exits or on :func:`stop`. Text output on a pipe unless ``stdout`` is given."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.STDOUT)
    kw.setdefault("text", True)
    return subprocess.Popen([sys.executable, "-m", "tests.reaper", *cmd],
                            cwd=Path(__file__).resolve().parents[1], **kw)


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL a :func:`reaped` command and everything it started (the reaper does it on
    SIGTERM), and wait for it; nothing if it has ended."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=timeout)


def main(argv: list[str]) -> int:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = subprocess.Popen(argv)

    def stop(signum, frame):
        kill_descendants()
        os._exit(137)

    signal.signal(signal.SIGTERM, stop)
    code = child.wait()
    kill_descendants()  # what the command left running
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
