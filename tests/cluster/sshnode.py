"""A machine for ``ray up`` on this one: an SSH server on a loopback address, in its own PID
namespace, with everything it writes under one test folder.

``ray up`` with Ray's local provider runs a cluster file's commands over SSH on each listed
address. Here Debian's ``sshd`` serves them on ``127.0.0.1`` (a free port, reached through the
file's ``auth.ssh_proxy_command``, as a bastion would be: Ray's SSH runner has no port option),
with its own host key and authorised key under the test's folder. Its sessions get
``SetEnv``: ``HOME`` (the node's home: what ``~`` in the cluster file means there), ``RAY_TMPDIR``
(the node's Ray temp dir) and the variables the test names (``WHICHMODEL_VENV``).

The server runs in a new PID namespace (``unshare --pid --mount-proc``) under a small init
that reaps orphans, so ``ray stop`` -- which the cluster files and ``ray down`` run and which
stops every Ray process it can see -- sees only this node's processes, as on a machine of its
own, and never another Ray of this machine. Stopping the node ends its init: the kernel then
kills every process of the namespace (Ray's daemons, workers, a job's driver).

Outside the test's folder only ``/run/sshd`` is needed: sshd's fixed, empty privilege-separation
folder, which Debian's init scripts create at boot (made here when missing).
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
# PID 1 of the namespace: start sshd, reap every orphan, end with sshd (the namespace with it).
INIT = """
import os, signal, sys
child = os.fork()
if child == 0:
    os.execv(sys.argv[1], sys.argv[1:])
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: os.kill(child, signal.SIGTERM))
while True:
    try:
        pid, _ = os.wait()
    except ChildProcessError:
        break
    if pid == child:
        break
"""


def make_keys(folder: Path) -> tuple[Path, Path, Path]:
    """(host key, client key, authorized_keys), all new, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    host, client = folder / "host_ed25519", folder / "client_ed25519"
    for key, comment in ((host, "whichmodel-test-host"), (client, "whichmodel-test-client")):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                        str(key)], check=True)
    authorized = folder / "authorized_keys"
    authorized.write_text(Path(f"{client}.pub").read_text())
    authorized.chmod(0o600)
    return host, client, authorized


class SshNode:
    def __init__(self, folder: Path, address: str, port: int, host_key: Path,
                 authorized_keys: Path, env: dict[str, str]):
        self.folder, self.address, self.port = folder, address, port
        self.home = folder / "home"
        self.ray_tmpdir = folder / "tmp"
        self.log = folder / "sshd.log"
        self.proc: subprocess.Popen | None = None
        for d in (self.home, self.ray_tmpdir):
            d.mkdir(parents=True, exist_ok=True)
        session_env = {"HOME": str(self.home), "RAY_TMPDIR": str(self.ray_tmpdir), **env}
        self.config = folder / "sshd_config"
        self.config.write_text("\n".join([
            f"ListenAddress {address}:{port}",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized_keys}",
            f"PidFile {folder / 'sshd.pid'}",
            f"AllowUsers {getpass.getuser()}",
            "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
            "StrictModes no",  # the keys live under /tmp (world-writable), not under ~/.ssh
            "UsePAM no", "AllowTcpForwarding local", "X11Forwarding no", "PrintMotd no",
            "LogLevel INFO",
            "SetEnv " + " ".join(f"{k}={v}" for k, v in session_env.items()),
        ]) + "\n")

    def start(self, timeout_s: float = 30.0) -> None:
        if not Path("/run/sshd").is_dir():  # sshd's privilege-separation folder (see above)
            Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True,
                               text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd refuses {self.config}: {check.stderr.strip()}")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable,
                 "-c", INIT, SSHD, "-D", "-e", "-f", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd on {self.address}:{self.port} exited: "
                                   f"{self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((self.address, self.port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"sshd on {self.address}:{self.port} not up: "
                           f"{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        """End the namespace: its init, then (the kernel) every process in it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None
