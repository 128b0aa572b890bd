"""Every setting of the tracking server, read from the environment (the README's table).

One entry per variable: name, meaning, default, secret or not. ``load_settings`` checks them all
at once and names every missing or invalid variable in one error; nothing here prints a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from whichmodel.errors import WhichModelError
from whichmodel.uri import redact_uri

MIN_ADMIN_PASSWORD = 12  # MLflow's basic auth refuses shorter admin passwords
MAX_AUTO_WORKERS = 16


@dataclass(frozen=True)
class Setting:
    name: str
    meaning: str
    default: str | None  # None: required
    secret: bool = False
    required: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("MLFLOW_BACKEND_STORE_URI",
            "PostgreSQL backend store, `postgresql://USER@HOST:PORT/DB` (put the password in "
            "`PGPASSWORD`, not in the URI)", None, required=True),
    Setting("PGPASSWORD", "password of the backend store's database user (libpq)", "unset",
            secret=True),
    Setting("MLFLOW_ARTIFACTS_DESTINATION",
            "where the server stores artifacts it proxies, `s3://BUCKET/PREFIX`", None,
            required=True),
    Setting("MLFLOW_S3_ENDPOINT_URL",
            "S3-compatible endpoint (MinIO, Ceph, moto); unset: AWS S3", "AWS"),
    Setting("AWS_ACCESS_KEY_ID", "S3 access key id (boto3)", "boto3's credential chain"),
    Setting("AWS_SECRET_ACCESS_KEY", "S3 secret access key (boto3)", "boto3's credential chain",
            secret=True),
    Setting("AWS_DEFAULT_REGION", "S3 region (boto3)", "us-east-1"),
    Setting("MLFLOW_AUTH_ADMIN_USERNAME", "basic-auth admin user, created on the first start",
            "admin"),
    Setting("MLFLOW_AUTH_ADMIN_PASSWORD",
            f"the admin's password, at least {MIN_ADMIN_PASSWORD} characters; used only when "
            "the admin user is created (change it later through MLflow's update-password API)",
            None, secret=True, required=True),
    Setting("MLFLOW_FLASK_SERVER_SECRET_KEY",
            "secret key for the auth app's CSRF tokens (the same on every server replica)",
            None, secret=True, required=True),
    Setting("MLFLOW_AUTH_DATABASE_URI",
            "database of users and permissions", "`MLFLOW_BACKEND_STORE_URI`"),
    Setting("MLFLOW_AUTH_DEFAULT_PERMISSION",
            "permission of a user on experiments it did not create: READ, EDIT, MANAGE, "
            "NO_PERMISSIONS", "READ"),
    Setting("MLFLOW_AUTH_CACHE_TTL_S",
            "seconds a verified password is cached per worker (each check is a slow PBKDF2 "
            "hash); a changed password may be accepted that long on other workers; 0: off",
            "60"),
    Setting("MLFLOW_SERVER_HOST", "interface to bind; 0.0.0.0 to serve other machines",
            "127.0.0.1"),
    Setting("MLFLOW_SERVER_PORT", "port", "5000"),
    Setting("MLFLOW_SERVER_WORKERS",
            "uvicorn worker processes, or `auto`: one per CPU this process may use, at most "
            f"{MAX_AUTO_WORKERS} (each holds ~0.3 GB); the local stack starts 2", "auto"),
    Setting("MLFLOW_SERVER_ALLOWED_HOSTS",
            "`--allowed-hosts`: Host headers accepted when the server is reached by name",
            "MLflow's: localhost and private IPs"),
)

PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


class ConfigError(WhichModelError, ValueError):
    """A missing or invalid setting; the message names the variable(s)."""


@dataclass(frozen=True)
class ServerConfig:
    backend_store_uri: str
    artifacts_destination: str
    admin_username: str
    auth_database_uri: str
    default_permission: str
    auth_cache_ttl_s: int
    host: str
    port: int
    workers: int
    allowed_hosts: str | None
    s3_endpoint_url: str | None


def load_settings(environ: Mapping[str, str] | None = None) -> ServerConfig:
    env = os.environ if environ is None else environ
    problems = [f"{s.name} is not set ({s.meaning})" for s in SETTINGS
                if s.required and not env.get(s.name)]
    backend = env.get("MLFLOW_BACKEND_STORE_URI", "")
    if backend and urlsplit(backend).scheme.split("+")[0] != "postgresql":
        problems.append(f"MLFLOW_BACKEND_STORE_URI must be a postgresql:// URI, got "
                        f"{redact_uri(backend)!r}")
    artifacts = env.get("MLFLOW_ARTIFACTS_DESTINATION", "")
    if artifacts and not (artifacts.startswith("s3://") and len(artifacts) > len("s3://")):
        problems.append(f"MLFLOW_ARTIFACTS_DESTINATION must be s3://BUCKET[/PREFIX], got "
                        f"{artifacts!r}")
    password = env.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")
    if password and len(password) < MIN_ADMIN_PASSWORD:
        problems.append(f"MLFLOW_AUTH_ADMIN_PASSWORD is too short ({len(password)} characters; "
                        f"at least {MIN_ADMIN_PASSWORD})")
    permission = env.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ").upper()
    if permission not in PERMISSIONS:
        problems.append(f"MLFLOW_AUTH_DEFAULT_PERMISSION must be one of {', '.join(PERMISSIONS)}, "
                        f"got {permission!r}")
    port = _int(env, "MLFLOW_SERVER_PORT", 5000, problems)
    raw_workers = env.get("MLFLOW_SERVER_WORKERS") or "auto"
    try:
        workers = server_workers(raw_workers)
        if workers < 1:
            raise ValueError
    except ValueError:
        problems.append(f"MLFLOW_SERVER_WORKERS must be an integer >= 1 or auto, got "
                        f"{raw_workers!r}")
        workers = 1
    cache_ttl = _int(env, "MLFLOW_AUTH_CACHE_TTL_S", 60, problems, minimum=0)
    if problems:
        raise ConfigError("; ".join(problems))
    return ServerConfig(
        backend_store_uri=backend, artifacts_destination=artifacts,
        admin_username=env.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin",
        auth_database_uri=env.get("MLFLOW_AUTH_DATABASE_URI") or backend,
        default_permission=permission, auth_cache_ttl_s=cache_ttl,
        host=env.get("MLFLOW_SERVER_HOST") or "127.0.0.1", port=port, workers=workers,
        allowed_hosts=env.get("MLFLOW_SERVER_ALLOWED_HOSTS") or None,
        s3_endpoint_url=env.get("MLFLOW_S3_ENDPOINT_URL") or None)


def server_workers(value: str | int) -> int:
    """``MLFLOW_SERVER_WORKERS``: a number, or ``auto``: the CPUs this process may run on (its
    affinity, as a container's CPU set limits it), at most ``MAX_AUTO_WORKERS``. The server's
    requests are short database transactions and S3 transfers: on a 2-core machine two workers
    carry a sweep's logging (README, "Benchmarks"); a cluster's head node warrants more."""
    if str(value).strip().lower() != "auto":
        return int(value)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_AUTO_WORKERS))


def _int(env: Mapping[str, str], name: str, default: int, problems: list[str],
         minimum: int = 1) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
        if value < minimum:
            raise ValueError
        return value
    except ValueError:
        problems.append(f"{name} must be an integer >= {minimum}, got {raw!r}")
        return default


def settings_table() -> str:
    """The README's table, from ``SETTINGS`` (a test keeps the two in step)."""
    rows = ["| variable | meaning | default | secret |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        default = "required" if s.required else s.default
        rows.append(f"| `{s.name}` | {s.meaning} | {default} | {'yes' if s.secret else 'no'} |")
    return "\n".join(rows)
