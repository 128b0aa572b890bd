"""Cluster mode: run a sweep as a Ray Job on a running Ray cluster, and list, follow, stop jobs.

    ray up cluster.yaml && ray dashboard cluster.yaml        # SSH tunnel to the head's :8265
    whichmodel submit sweeps/configs/quickstart.yaml --address http://127.0.0.1:8265
    whichmodel jobs --address http://127.0.0.1:8265
    whichmodel logs JOB --address http://127.0.0.1:8265 --follow
    whichmodel stop JOB --address http://127.0.0.1:8265

``submit`` validates the sweep file here, then submits ``python -m sweeps.cli run CONFIG`` with the
project folder as the job's working dir (Ray uploads it; every node of the job runs that code) and
the tracking, storage and hub variables of *this* shell as the job's environment: a Ray cluster
YAML cannot read the submitter's environment, so this is where they cross. Secrets never do: Ray
keeps a job's runtime env in its job table, shown by the Jobs API and the dashboard, so a secret
set here (``sweeps.cluster.node_secrets.is_secret``: the tracking password or token, AWS keys, ...) is
left out, and the job's driver and trials read it from the secrets file on the nodes (or use
the nodes' instance profile): :mod:`sweeps.cluster.node_secrets`. Only variable names are ever printed.
The address defaults to ``$RAY_API_SERVER_ADDRESS``, then ``$RAY_ADDRESS``; an explicit
``--address`` wins over both (Ray's own client would let the environment win).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shlex
import socket
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from sweeps.cluster.node_secrets import DEFAULT_PATH, ENV, WORKER_SETUP_HOOK, is_secret
from whichmodel.errors import WhichModelError

# Variables a sweep needs on the cluster, passed from the submitter's environment when set,
# except the secrets among them (is_secret: never in the runtime env; the nodes' secrets file).
# Ray's own address variables are left out on purpose: inside a job, Ray sets RAY_ADDRESS to the
# cluster itself, and the submitter's (the dashboard URL) would break ``ray.init``.
ENV_PASSTHROUGH = (
    # MLflow: where runs go, and how to log in to a tracking server.
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_S3_ENDPOINT_URL",
    # S3 and S3-compatible stores (Tune storage, artifacts when not proxied by the server).
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
    "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    # Hub weights and caches (timm / Hugging Face, torchvision).
    "HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN", "TORCH_HOME",
    # Ray and Tune tuning knobs that change how the driver runs, not where it connects.
    "RAY_AIR_NEW_OUTPUT", "RAY_DEDUP_LOGS",
)
ENV_PREFIXES = ("WHICHMODEL_", "TUNE_")

# Never uploaded as the job's working dir: environments, caches, local stores and outputs.
# (Ray also honours the folder's .gitignore; these hold for folders that are not git checkouts.)
WORKING_DIR_EXCLUDES = [
    ".venv", "venv", ".git", ".whichmodel", "reports", "mlruns", "mlartifacts", "*.db",
    "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".mypy_cache", ".ruff_cache",
    ".ipynb_checkpoints", "build", "dist", "node_modules", ".tox", ".cache", "test-artifacts",
]

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
ADDRESS_SCHEMES = ("http", "https", "ray")  # and HOST:PORT, the cluster's GCS
AGENT_WAIT_S = 120.0  # how long submit retries while a new head's job agent starts (a loaded
# head took over 30 s here)


# --------------------------------------------------------------------------- the address
def resolve_address(address: str | None) -> str:
    """``--address``, else ``$RAY_API_SERVER_ADDRESS``, else ``$RAY_ADDRESS``."""
    address = (address or os.environ.get("RAY_API_SERVER_ADDRESS")
               or os.environ.get("RAY_ADDRESS"))
    if not address:
        raise WhichModelError(
            "no Ray cluster given: pass --address http://HEAD:8265 (with 'ray dashboard "
            "cluster.yaml' running: http://127.0.0.1:8265) or set RAY_API_SERVER_ADDRESS")
    scheme = address.split("://", 1)[0].lower() if "://" in address else None
    if scheme is not None and scheme not in ADDRESS_SCHEMES:
        raise WhichModelError(
            f"--address {address!r}: Ray's Jobs API does not speak {scheme}://; give the "
            "dashboard's http://HEAD:8265 (or https://, ray://, or HOST:PORT of the cluster)")
    return address.rstrip("/")


@contextmanager
def _env_without(*names: str):
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast and clearly: Ray's client has no connect timeout of its own."""
    url = urlparse(address if "://" in address else f"gcs://{address}")
    if url.scheme in ("http", "https"):
        what, port = "the Ray dashboard", url.port or (443 if url.scheme == "https" else 80)
    elif url.scheme == "gcs" and url.hostname and url.port:
        what, port = "the Ray cluster (GCS)", url.port  # Ray looks the dashboard up through it
    else:
        return  # ray://, or a provider's own scheme: left to Ray
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise WhichModelError(
            f"cannot reach {what} at {address}: {exc.strerror or exc} (is the cluster up, and "
            "'ray dashboard cluster.yaml' forwarding its port?)") from None


class Cluster:
    """A Ray cluster's Jobs API, its errors turned into one clear ``WhichModelError`` line."""

    def __init__(self, address: str | None = None):
        from ray.job_submission import JobSubmissionClient

        self.address = resolve_address(address)
        _check_reachable(self.address)
        # "WebSocket closed for job ..." after every followed log is Ray's noise, not news.
        logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
        try:
            # Ray's client lets these variables override the address it is given.
            with _env_without("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
                self.client = JobSubmissionClient(self.address)
        except Exception as exc:  # ConnectionError, AuthenticationError, a failed version check
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> WhichModelError:
        from ray.exceptions import AuthenticationError

        if isinstance(exc, AuthenticationError):
            return WhichModelError(
                f"the Ray cluster at {self.address} refused this client: set RAY_AUTH_MODE=token "
                "and RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the cluster's token")
        return WhichModelError(f"Ray cluster at {self.address}: {exc}")

    def _call(self, job_id: str | None, fn, *args):
        """One request; an unknown job or a lost connection become one clear line."""
        import requests

        try:
            return fn(*args)
        except RuntimeError as exc:
            text = str(exc)
            if job_id and ("404" in text or "does not exist" in text):
                raise WhichModelError(
                    f"no job {job_id!r} on the Ray cluster at {self.address}; 'whichmodel jobs "
                    f"--address {self.address}' lists them") from None
            raise self._error(exc) from None
        except (ConnectionError, requests.exceptions.ConnectionError) as exc:
            raise WhichModelError(f"lost the Ray dashboard at {self.address}: {exc}") from None
        except Exception as exc:
            raise self._error(exc) from None

    def submit(self, sub: Submission) -> str:
        # A head whose Ray just started may not have registered its agent yet: Ray answers "No
        # available agent to submit job, please try again later" -- so, a while, we do.
        deadline = time.monotonic() + AGENT_WAIT_S
        try:
            while True:
                try:
                    return self.client.submit_job(
                        entrypoint=sub.entrypoint, runtime_env=sub.runtime_env,
                        submission_id=sub.submission_id, metadata=sub.metadata)
                except RuntimeError as exc:
                    if "No available agent" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(2.0)
        except Exception as exc:  # packaging the working dir, or the cluster refusing the job
            message = str(exc)
            for value in sub.env.values():  # an echoed runtime env must not show a secret
                if len(value) >= 4:
                    message = message.replace(value, "***")
            raise WhichModelError(f"submitting {sub.config} to the Ray cluster at "
                                  f"{self.address} failed: {message}") from None

    def status(self, job_id: str) -> str:
        return str(self._call(job_id, self.client.get_job_status, job_id))

    def wait_for(self, job_id: str, statuses: Iterable[str] = TERMINAL,
                 timeout_s: float = 7 * 24 * 3600.0, poll_s: float = 1.0) -> str:
        """Poll until the job's status is one of ``statuses``; returns it (the last seen on
        timeout)."""
        statuses = set(statuses)
        deadline = time.monotonic() + timeout_s
        status = self.status(job_id)
        while status not in statuses and time.monotonic() < deadline:
            time.sleep(poll_s)
            status = self.status(job_id)
        return status

    def print_logs(self, job_id: str, follow: bool = False, stream=None) -> str:
        """Print the job's driver log, all of it so far or following it to the job's end;
        returns the job's status."""
        stream = stream or sys.stdout
        if not follow:
            stream.write(self._call(job_id, self.client.get_job_logs, job_id))
            stream.flush()
            return self.status(job_id)
        self.status(job_id)  # an unknown job fails here, before the websocket opens

        async def tail():
            async for chunk in self.client.tail_job_logs(job_id):
                stream.write(chunk)
                stream.flush()

        try:
            asyncio.run(tail())
        except Exception as exc:  # the stream broke; the job itself goes on: wait for its end
            print(f"[whichmodel] log stream interrupted ({exc}); waiting for the job's end",
                  file=sys.stderr, flush=True)
        return self.wait_for(job_id)

    def jobs(self) -> list:
        return list(self._call(None, self.client.list_jobs))

    def stop(self, job_id: str, timeout_s: float = 60.0) -> tuple[bool, str]:
        """Ask the job to stop (SIGTERM to its driver's process group, SIGKILL after Ray's
        grace period); returns whether it was running, and its status once terminal."""
        was_running = self._call(job_id, self.client.stop_job, job_id)
        return bool(was_running), self.wait_for(job_id, timeout_s=timeout_s)


# --------------------------------------------------------------------------- submitting
def project_root() -> Path:
    """The source checkout this ``sweeps`` package belongs to: the default working dir."""
    root = Path(__file__).resolve().parents[2]  # sweeps/cluster/jobs.py -> the checkout
    if not ((root / "setup.cfg").is_file() or (root / "pyproject.toml").is_file()):
        raise WhichModelError(
            f"{root}: not a whichmodel source checkout (no setup.cfg); pass --working-dir "
            "with the folder that holds the sweep file")
    return root


def passed_names(environ: dict[str, str]) -> list[str]:
    """The allow-listed variables set in ``environ``, secrets included (see :func:`job_env`)."""
    return [k for k in environ if k in ENV_PASSTHROUGH or k.startswith(ENV_PREFIXES)]


def withheld_secrets(environ: dict[str, str] | None = None) -> list[str]:
    """The allow-listed secrets set here that ``job_env`` leaves out of the job."""
    environ = os.environ if environ is None else environ
    return sorted(k for k in passed_names(environ) if is_secret(k))


def job_env(extra: Iterable[str] = (), environ: dict[str, str] | None = None) -> dict[str, str]:
    """The job's environment: the allow-listed variables that are set here, less the secrets,
    plus ``extra`` names (each must be set, none a secret)."""
    environ = os.environ if environ is None else environ
    env = {k: environ[k] for k in passed_names(environ) if not is_secret(k)}
    for name in extra:
        if not name.isidentifier():
            raise WhichModelError(f"--env {name!r}: give a variable's name (its value is read "
                                  "from this environment, never from the command line)")
        if is_secret(name):
            raise WhichModelError(
                f"--env {name}: a secret never goes into the job's runtime env (Ray shows it in "
                f"the job table); put it in the secrets file on the nodes ({DEFAULT_PATH}, "
                "README 'Secrets on a cluster')")
        if name not in environ:
            raise WhichModelError(f"--env {name}: not set in this environment")
        env[name] = environ[name]
    for name, value in env.items():  # an address with a password in it is a secret too
        if "://" in value and urlparse(value).password:
            raise WhichModelError(
                f"{name}: its address carries a password, which would go into the job's runtime "
                "env (Ray shows it in the job table); give the address without it and put the "
                f"password in the secrets file on the nodes ({DEFAULT_PATH}, e.g. "
                "MLFLOW_TRACKING_PASSWORD)")
    return env


@dataclass
class Submission:
    entrypoint: str
    working_dir: Path
    config: str  # the sweep file, relative to the working dir
    sweep: str
    env: dict[str, str] = field(repr=False)
    submission_id: str = ""
    withheld: list[str] = field(default_factory=list)  # secrets set here, not sent (names)

    @property
    def runtime_env(self) -> dict:
        """What Ray stores in its job table: no secret value, only where to read them."""
        return {"working_dir": str(self.working_dir), "excludes": list(WORKING_DIR_EXCLUDES),
                "env_vars": dict(self.env), "worker_process_setup_hook": WORKER_SETUP_HOOK}

    @property
    def metadata(self) -> dict[str, str]:
        return {"whichmodel_sweep": self.sweep, "whichmodel_config": self.config}


def _inside(path: Path, root: Path, what: str, config: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise WhichModelError(
            f"{config}: {what} {path} is outside the job's working dir {root}; only that folder "
            "is uploaded to the cluster (move the file into it, or pass --working-dir)") from None


def plan_submission(config: str | Path, *, working_dir: str | Path | None = None,
                    extra_env: Iterable[str] = (), no_report: bool = False,
                    environ: dict[str, str] | None = None, force: bool = False) -> Submission:
    """Validate the sweep file here and build the job: nothing malformed reaches the cluster."""
    from sweeps.plan import plan_sweep

    config = Path(config)
    if not config.is_file():
        raise WhichModelError(f"{config}: no such sweep file")
    root = Path(working_dir).resolve() if working_dir else project_root()
    if not root.is_dir():
        raise WhichModelError(f"--working-dir {root}: no such folder")
    rel = _inside(config, root, "the sweep file", config)
    plan = plan_sweep(config)
    # The files the sweep file points to travel only if they are inside the working dir too.
    if plan.zoo_path.is_file():
        _inside(plan.zoo_path, root, "key 'zoo': the zoo file", config)
    if plan.cfg.catalog:
        _inside(config.parent / plan.cfg.catalog, root, "key 'catalog': the catalog file", config)
    args = (["python", "-m", "sweeps.cli", "run", rel] + (["--no-report"] if no_report else [])
            + (["--force"] if force else []))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Submission(entrypoint=shlex.join(args), working_dir=root, config=rel,
                      sweep=plan.cfg.name, env=job_env(extra_env, environ),
                      submission_id=f"whichmodel-{plan.cfg.name}-{stamp}-{secrets.token_hex(2)}",
                      withheld=withheld_secrets(environ))


def describe_submission(sub: Submission, job_id: str, address: str) -> str:
    names = ", ".join(sorted(sub.env)) or "none"
    lines = [
        f"[whichmodel] submitted job {job_id} to {address}",
        f"  entrypoint:  {sub.entrypoint}",
        f"  working dir: {sub.working_dir} (uploaded without "
        f"{', '.join(WORKING_DIR_EXCLUDES[:6])}, ... and what .gitignore ignores)",
        f"  environment: {names} (values not shown)",
    ]
    if sub.withheld:
        lines.append(f"  secrets:     {', '.join(sub.withheld)} set here, not sent (Ray would "
                     f"show them in its job table): the job reads them from ${ENV} "
                     f"on the nodes (default {DEFAULT_PATH}), or uses the nodes' own identity")
    if "MLFLOW_TRACKING_URI" not in sub.env:
        lines.append("  note: MLFLOW_TRACKING_URI is not set here, so runs go to the head node's "
                     "local store ($WHICHMODEL_HOME/mlflow.db there)")
    lines += [f"  follow: whichmodel logs {job_id} --address {address} --follow",
              f"  stop:   whichmodel stop {job_id} --address {address}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- listing
def format_jobs(jobs) -> str:
    rows = [("JOB", "STATUS", "START", "ENTRYPOINT")]
    for j in sorted(jobs, key=lambda j: j.start_time or 0):
        start = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000))
                 if j.start_time else "-")
        rows.append((j.submission_id or j.job_id or "-", str(j.status), start, j.entrypoint))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}"
                     for r in rows)
