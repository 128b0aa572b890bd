"""The whole tracking stack on this machine, on loopback: PostgreSQL, S3 (moto), MLflow with auth.

    python -m mlflow_server.local [--dir DIR] [--port 5000]     # make mlflow-server

Starts a PostgreSQL cluster in ``DIR/pg`` (``initdb`` on first use, ``pg_ctl start`` on a free
port, database ``mlflow``), moto's S3 server (``moto.server``, a separate process so that the
MLflow server and Ray workers reach it) with a bucket, and ``python -m mlflow_server`` against
both, then prints the tracking URI and the environment a client needs. Ctrl-C (or SIGTERM) stops
all three; so does an error while starting. Generated secrets (database, admin and CSRF) live in
``DIR/secrets.env`` (mode 0600) and are reused on the next start, because the admin user and the
database persist in ``DIR/pg``. moto keeps artifacts in memory: they are gone once it stops.

In Python (the cluster tests use it)::

    with local_stack(tmp_dir) as stack:
        os.environ.update(stack.client_env())    # MLFLOW_TRACKING_URI, _USERNAME, _PASSWORD
        stack.stop_mlflow(); stack.start_mlflow()  # the same port; PostgreSQL and S3 keep running

PostgreSQL refuses to run as root: as root, its processes run as the ``postgres`` system user
(``runuser``), which must be able to reach ``DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from mlflow_server.launch import die_with_parent

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # so that `python -m mlflow_server` imports
PG_USER = "mlflow"
PG_DATABASE = "mlflow"
START_TIMEOUT_S = 120.0


class StackError(RuntimeError):
    """A component did not start; the message says which and shows the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop_process_group(proc: subprocess.Popen | None, grace_s: float = 20.0) -> None:
    from mlflow_server.launch import stop_group

    stop_group(proc, grace_s)


def pg_bin_dir() -> Path:
    """``PG_BIN``, else Debian's newest ``/usr/lib/postgresql/N/bin``, else ``initdb`` on PATH."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                    else 0)
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise StackError("PostgreSQL not found (no initdb): install it ('make system-deps' or "
                     "'apt-get install postgresql'), or set PG_BIN to its bin folder")


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """As root, PostgreSQL's commands run as the ``postgres`` system user."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise StackError("running as root, and there is no 'postgres' system user to run "
                         "PostgreSQL as (Debian's postgresql package creates it)") from None
    return ["runuser", "-u", "postgres", "--"], user


def _check_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Every folder above ``path`` must let ``user`` through (x permission)."""
    groups = {user.pw_gid} | {g for g in os.getgrouplist(user.pw_name, user.pw_gid)}
    for folder in reversed(path.resolve().parents):
        st = folder.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            raise StackError(f"{path}: the 'postgres' user cannot reach it ({folder} is mode "
                             f"{stat.filemode(st.st_mode)}); PostgreSQL refuses to run as root, "
                             "so choose a folder it can reach, e.g. under /tmp or /var/tmp")


@dataclass
class Postgres:
    """A PostgreSQL cluster in ``datadir``, listening on 127.0.0.1:``port`` only (no socket)."""

    datadir: Path
    password: str
    port: int = 0
    durable: bool = True  # False: fsync off, for throw-away test clusters
    host: str = "127.0.0.1"

    def __post_init__(self):
        self.datadir = Path(self.datadir).resolve()
        self.log = self.datadir.parent / "postgres.log"
        self.bin = pg_bin_dir()
        self.prefix, self.user = _run_as()
        self.port = self.port or free_port(self.host)

    @property
    def uri(self) -> str:
        """The backend store URI; the password travels separately (``PGPASSWORD``)."""
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{PG_DATABASE}"

    def _cmd(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, *args], capture_output=True, text=True, **kw)

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        if self.user is not None:
            _check_reachable(self.datadir, self.user)
        self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._own(self.datadir)
        pwfile = self.datadir.parent / f".pgpass-init-{os.getpid()}"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        self._own(pwfile)
        try:
            r = self._cmd(str(self.bin / "initdb"), "-D", str(self.datadir), "-U", PG_USER,
                          f"--pwfile={pwfile}", "--auth-host=scram-sha-256",
                          "--auth-local=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        finally:
            pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise StackError(f"initdb failed in {self.datadir}:\n{r.stdout}{r.stderr}")
        conf = ["", "# whichmodel mlflow_server.local: loopback TCP only, no Unix socket",
                f"listen_addresses = '{self.host}'", "unix_socket_directories = ''"]
        if not self.durable:
            conf += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n".join(conf) + "\n")

    def start(self) -> None:
        self.init()
        self.log.touch()
        self._own(self.log)
        r = self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.log),
                      "-o", f"-p {self.port}", "-w", "-t", "60", "start")
        if r.returncode != 0:
            raise StackError(f"PostgreSQL did not start on {self.host}:{self.port}:\n"
                             f"{r.stdout}{r.stderr}\n{_tail(self.log)}")
        self._create_database()

    def _create_database(self) -> None:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=PG_USER,
                                password=self.password, dbname="postgres", connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{PG_DATABASE}"')
        finally:
            conn.close()

    def stop(self) -> None:
        if not (self.datadir / "postmaster.pid").exists():
            return
        r = self._cmd(str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w",
                      "-t", "30", "stop")
        if r.returncode != 0 and (self.datadir / "postmaster.pid").exists():
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- S3 (moto)
@dataclass
class MotoS3:
    """moto's S3 in server mode (other processes reach it); state in memory."""

    log: Path
    port: int = 0
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None

    def __post_init__(self):
        self.port = self.port or free_port(self.host)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StackError(f"moto's S3 server exited ({self.proc.returncode}):\n"
                                 f"{_tail(self.log)}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.endpoint}/moto-api/", timeout=2).status_code < 500:
                    return
            time.sleep(0.2)
        raise StackError(f"moto's S3 server did not answer on {self.endpoint}:\n"
                         f"{_tail(self.log)}")

    def client(self, access_key: str = "testing", secret_key: str = "testing"):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key, aws_secret_access_key=secret_key)

    def stop(self) -> None:
        _stop_process_group(self.proc, grace_s=10)
        self.proc = None


# --------------------------------------------------------------------------- the stack
def _load_or_make_secrets(path: Path) -> dict[str, str]:
    """Reuse ``path``'s secrets (the admin and database outlive one start), else make them."""
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                values[k.strip()] = v.strip()
    wanted = {"PGPASSWORD": lambda: secrets.token_urlsafe(18),
              "MLFLOW_AUTH_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(18),
              "MLFLOW_FLASK_SERVER_SECRET_KEY": lambda: secrets.token_hex(32)}
    if all(values.get(k) for k in wanted):
        return values
    for k, make in wanted.items():
        if not values.get(k):
            values[k] = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# secrets of mlflow_server.local (keep private)\n")
        f.writelines(f"{k}={v}\n" for k, v in values.items())
    return values


@dataclass
class LocalStack:
    root: Path
    postgres: Postgres
    s3: MotoS3
    port: int
    username: str
    password: str = field(repr=False)
    bucket: str
    prefix: str
    workers: int
    server_secrets: dict[str, str] = field(repr=False)
    host: str = "127.0.0.1"
    mlflow_proc: subprocess.Popen | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.env"

    @property
    def mlflow_log(self) -> Path:
        return self.root / "mlflow.log"

    def client_env(self) -> dict[str, str]:
        """What an MLflow client needs (tracking URI and basic-auth credentials)."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_TRACKING_USERNAME": self.username,
                "MLFLOW_TRACKING_PASSWORD": self.password}

    def server_env(self) -> dict[str, str]:
        """The launcher's environment (``mlflow_server/README.md``)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_AUTH_"))}
        env.update(self.server_secrets)
        env.update(
            MLFLOW_BACKEND_STORE_URI=self.postgres.uri,
            MLFLOW_ARTIFACTS_DESTINATION=f"s3://{self.bucket}/{self.prefix}",
            MLFLOW_S3_ENDPOINT_URL=self.s3.endpoint, AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
            MLFLOW_AUTH_ADMIN_USERNAME=self.username, MLFLOW_SERVER_HOST=self.host,
            MLFLOW_SERVER_PORT=str(self.port), MLFLOW_SERVER_WORKERS=str(self.workers),
            PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                     os.environ.get("PYTHONPATH")])))
        env.pop("AWS_ENDPOINT_URL", None)
        return env

    @property
    def mlflow_running(self) -> bool:
        return self.mlflow_proc is not None and self.mlflow_proc.poll() is None

    def start_mlflow(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the MLflow server (the launcher) and wait until ``/health`` answers."""
        if self.mlflow_running:
            return
        deadline = time.monotonic() + timeout
        while _port_open(self.host, self.port):  # a previous server still closing its socket
            if time.monotonic() > deadline:
                raise StackError(f"port {self.port} is taken: cannot start MLflow there")
            time.sleep(0.2)
        with open(self.mlflow_log, "ab") as log:
            self.mlflow_proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow_server"], env=self.server_env(), cwd=self.root,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent)
        while time.monotonic() < deadline:
            if self.mlflow_proc.poll() is not None:
                raise StackError(f"the MLflow server exited ({self.mlflow_proc.returncode}):\n"
                                 f"{_tail(self.mlflow_log)}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.tracking_uri}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        self.stop_mlflow()
        raise StackError(f"the MLflow server did not answer /health on {self.tracking_uri} within "
                         f"{timeout:.0f} s:\n{_tail(self.mlflow_log)}")

    def stop_mlflow(self) -> None:
        """Stop the MLflow server and its workers (PostgreSQL and S3 keep running)."""
        _stop_process_group(self.mlflow_proc)
        self.mlflow_proc = None

    def describe(self) -> str:
        return "\n".join([
            f"[mlflow-server] PostgreSQL  {self.postgres.uri}  (data {self.postgres.datadir})",
            f"[mlflow-server] S3 (moto)   {self.s3.endpoint}  bucket {self.bucket!r}, prefix "
            f"{self.prefix!r} (in memory: artifacts are gone when it stops)",
            f"[mlflow-server] MLflow      {self.tracking_uri}  (basic auth; log "
            f"{self.mlflow_log})",
            # the model-training view: runs tables, not the GenAI traces page (MLflow 3.17)
            f"[mlflow-server] UI          {self.tracking_uri}/#/experiments?"
            "workflowType=machine_learning",
            "",
            "A client needs:",
            f"  export MLFLOW_TRACKING_URI={self.tracking_uri}",
            f"  export MLFLOW_TRACKING_USERNAME={self.username}",
            "  export MLFLOW_TRACKING_PASSWORD=...   # MLFLOW_AUTH_ADMIN_PASSWORD in "
            f"{self.secrets_file}, e.g.",
            "  export MLFLOW_TRACKING_PASSWORD=\"$(sed -n 's/^MLFLOW_AUTH_ADMIN_PASSWORD=//p' "
            f"{self.secrets_file})\"",
            f"Check: python -m mlflow_server.health {self.tracking_uri}",
        ])


@contextlib.contextmanager
def local_stack(root: str | os.PathLike, *, port: int | None = None, bucket: str = "mlflow",
                prefix: str = "artifacts", username: str = "admin", workers: int = 1,
                durable: bool = True, host: str = "127.0.0.1") -> Iterator[LocalStack]:
    """PostgreSQL, moto S3 and MLflow (basic auth) on loopback; all stopped on exit or error.

    ``root`` holds the PostgreSQL cluster (``pg/``), the logs and ``secrets.env``; as root it must
    be reachable by the ``postgres`` user. ``port`` is MLflow's (default: a free one).
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    values = _load_or_make_secrets(root / "secrets.env")
    with contextlib.ExitStack() as stack:
        pg = Postgres(root / "pg", values["PGPASSWORD"], durable=durable, host=host)
        stack.callback(pg.stop)
        pg.start()
        s3 = MotoS3(root / "moto.log", host=host)
        stack.callback(s3.stop)
        s3.start()
        s3.client().create_bucket(Bucket=bucket)
        port = port or free_port(host)
        if _port_open(host, port):
            raise StackError(f"{host}:{port} is taken: choose another port for MLflow")
        server_secrets = {k: values[k] for k in ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD",
                                                 "MLFLOW_FLASK_SERVER_SECRET_KEY")}
        local = LocalStack(root, pg, s3, port, username, values["MLFLOW_AUTH_ADMIN_PASSWORD"],
                           bucket, prefix, workers, server_secrets, host=host)
        stack.callback(local.stop_mlflow)
        local.start_mlflow()
        yield local


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlflow_server.local",
                                description=__doc__.split("\n")[0])
    p.add_argument("--dir", default=os.path.join(os.environ.get("WHICHMODEL_HOME", ".whichmodel"),
                                                 "mlflow-server"),
                   help="PostgreSQL data, logs, secrets (default $WHICHMODEL_HOME/mlflow-server)")
    p.add_argument("--port", type=int, default=5000, help="MLflow's port (default 5000)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even if started ignoring it
    try:
        with local_stack(args.dir, port=args.port, workers=args.workers) as stack:
            print(stack.describe(), flush=True)
            print("\n[mlflow-server] running; Ctrl-C stops PostgreSQL, S3 and MLflow", flush=True)
            try:
                while stack.mlflow_running:
                    time.sleep(1)
            except (KeyboardInterrupt, SystemExit):
                for sig in (signal.SIGINT, signal.SIGTERM):  # let the clean-up finish
                    signal.signal(sig, signal.SIG_IGN)
                print("\n[mlflow-server] stopping MLflow, S3 and PostgreSQL", flush=True)
                return 0
            print(f"[mlflow-server] the MLflow server exited; see {stack.mlflow_log}",
                  file=sys.stderr)
            return 1
    except StackError as exc:
        print(f"mlflow-server: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while starting: the components started so far are stopped
        print("\n[mlflow-server] interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
