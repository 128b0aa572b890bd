"""Secrets on a cluster's nodes: a file only its user can read, never a job's runtime env.

Ray keeps a job's runtime env (its ``env_vars`` included) in the cluster's job table and returns
it through the Jobs API and the dashboard to every holder of the cluster token. So ``whichmodel
submit`` never puts a secret value there (:func:`is_secret`: ``SECRET_NAMES`` and names that
say PASSWORD, SECRET, TOKEN or CREDENTIALS); the job's driver and its trials read the secrets
on the node they run on, from ``$WHICHMODEL_SECRETS_FILE`` (default ``~/.whichmodel/secrets.env``):

- written by ``ray up`` from a local file the user names in the cluster file's ``file_mounts``
  (``~/.whichmodel/secrets.env: ~/.whichmodel/secrets.env``; rsync keeps its mode 0600), or put
  there by whoever runs the nodes;
- for S3 on AWS, better no key at all: the nodes' instance profile (``IamInstanceProfile``),
  which boto3 and pyarrow find by themselves.

The driver loads the file when ``whichmodel`` starts (``sweeps/cli.py``), every Ray worker of a
submitted job through the job's ``worker_process_setup_hook`` (:data:`WORKER_SETUP_HOOK`, a
module path, no value). The format: ``NAME=VALUE`` lines, blank lines, ``#`` comments and an
``export`` prefix allowed, quotes around a value removed, nothing expanded. A variable already
set in the process wins over the file. Only names are ever printed, never values.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import MutableMapping
from pathlib import Path

from whichmodel.errors import WhichModelError

ENV = "WHICHMODEL_SECRETS_FILE"
DEFAULT_PATH = "~/.whichmodel/secrets.env"
#: What a submitted job's Ray workers run first (``runtime_env["worker_process_setup_hook"]``).
WORKER_SETUP_HOOK = "sweeps.cluster.node_secrets.load_secrets"

# The tracking server's and S3's credentials. AWS_ACCESS_KEY_ID is not secret by itself, but it
# travels with its secret key: a node with an instance profile that got the id alone from the
# runtime env would fail (boto3: partial credentials) instead of using its profile.
SECRET_NAMES = frozenset({
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN",
})
_SECRET_WORD = re.compile(r"(^|_)(PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIALS?|PRIVATE_KEY)(_|$)")
_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def is_secret(name: str) -> bool:
    """A variable whose value never goes into a job's runtime env. A name ending in ``_FILE``,
    ``_PATH`` or ``_DIR`` names a place, not a secret (``WHICHMODEL_SECRETS_FILE``)."""
    if name in SECRET_NAMES:
        return True
    return bool(_SECRET_WORD.search(name)) and not name.endswith(("_FILE", "_PATH", "_DIR"))


def secrets_path(environ: MutableMapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(ENV) or DEFAULT_PATH).expanduser()


def read_secrets(path: Path) -> dict[str, str]:
    """The file's ``NAME=VALUE`` pairs; a file others can read, or a malformed line, is a
    one-line error naming the file (and the line, never its value)."""
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise WhichModelError(
            f"{path}: secrets file readable by others (mode {stat.filemode(st.st_mode)}, owner "
            f"uid {st.st_uid}); make it this user's alone: chmod 600 {path}")
    values: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise WhichModelError(f"{path}: line {n}: write NAME=VALUE (a variable name, '=', "
                                  "its value)")
        value = m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[m.group(1)] = value
    return values


def load_secrets(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set the secrets file's variables that ``environ`` (default: this process's) lacks;
    returns their names. No file: nothing to do (the node may have an instance profile)."""
    environ = os.environ if environ is None else environ
    path = secrets_path(environ)
    if not path.is_file():
        if ENV in environ and environ[ENV]:
            raise WhichModelError(f"{ENV}={path}: no such file; create it on every node (mode "
                                  "600) or unset the variable")
        return []
    loaded = []
    for name, value in read_secrets(path).items():
        if name not in environ:
            environ[name] = value
            loaded.append(name)
    return loaded
