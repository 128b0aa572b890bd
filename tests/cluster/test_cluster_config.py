"""cluster.yaml (AWS) and cluster-local.yaml (on-premise) pass Ray's own validation offline and
keep the properties cluster mode relies on: a head that runs no trial, GPU workers the autoscaler
adds and removes, the pinned project installed on every node, the dashboard bound to the
loopback, and no secret, tracking URI or bucket in the files."""

from __future__ import annotations

import configparser
import copy
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
FILES = ["cluster.yaml", "cluster-local.yaml"]


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def _pins() -> dict[str, str]:
    """``name -> version`` of every ``==`` pin in setup.cfg's install_requires."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    pins = {}
    for line in cfg["options"]["install_requires"].split("\n"):
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def _start_commands(cfg: dict, which: str) -> str:
    return " ".join(cfg[f"{which}_start_ray_commands"])


@pytest.mark.parametrize("name", FILES)
def test_ray_validates_the_file_before_and_after_filling_its_defaults(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load(name)
    validate_config(cfg)
    prepared = prepare_config(copy.deepcopy(cfg))  # offline for both providers
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", FILES)
def test_no_secret_tracking_uri_or_bucket_in_the_file(name):
    text = (REPO / name).read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an AWS access key id
    # No variable of the tracking server or the object store is given a value here.
    assert not re.search(r"\b(MLFLOW|AWS|HF)_[A-Z_]+\s*[:=]\s*\S", text)
    assert not re.search(r"(s3|postgresql|postgres|mysql|sqlite|file|https)://", text)
    # The only URL is the tunnelled dashboard in the usage notes.
    assert set(re.findall(r"http://[^\s'\"]+", text)) <= {"http://127.0.0.1:8265"}
    # Ray's auth token and the nodes' secrets travel as file mounts of the user's own files
    # (~/.ray/auth_token, ~/.whichmodel/secrets.env), never inline.
    text = text.replace("~/.ray/auth_token: ~/.ray/auth_token", "")
    text = text.replace("~/.whichmodel/secrets.env: ~/.whichmodel/secrets.env", "")
    assert not re.search(r"(password|secret|token)\s*[:=]\s*\S", text, re.IGNORECASE)


@pytest.mark.parametrize("name", FILES)
def test_every_node_starts_ray_with_token_authentication(name):
    cfg = _load(name)
    for kind in ("head", "worker"):
        assert "export RAY_AUTH_MODE=token " in _start_commands(cfg, kind)


@pytest.mark.parametrize("name", FILES)
def test_workers_start_warm_as_the_local_ray_does(name):
    """The head's system config (cluster-wide) preloads what tune_runner's local Ray preloads,
    and every node exports PL_DISABLE_FORK, which Tune would otherwise put in a runtime env that
    keeps trials off the preloaded workers."""
    import json

    from sweeps.tune_runner import worker_system_config

    cfg = _load(name)
    head = _start_commands(cfg, "head")
    (config,) = re.findall(r"--system-config='([^']*)'", head)
    assert json.loads(config) == worker_system_config()
    for kind in ("head", "worker"):
        assert re.search(r"export [^;]*\bPL_DISABLE_FORK=1\b", _start_commands(cfg, kind))


@pytest.mark.parametrize("name", FILES)
def test_dashboard_is_bound_to_the_loopback_and_no_port_is_opened(name):
    cfg = _load(name)
    head = _start_commands(cfg, "head")
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in (REPO / name).read_text()
    assert "IpPermissions" not in cfg["provider"].get("security_group", {})


@pytest.mark.parametrize("name", FILES)
def test_every_node_installs_the_synced_project_with_its_pins(name):
    cfg = _load(name)
    assert cfg["file_mounts"] == {"~/whichmodel": ".", "~/.ray/auth_token": "~/.ray/auth_token",
                                  "~/.whichmodel/secrets.env": "~/.whichmodel/secrets.env"}
    assert any(re.search(r"pip install (-q )?-e ~/whichmodel$", c) for c in cfg["setup_commands"])
    # The project's own pins do the pinning: torch and torchvision are a pair, Ray is exact.
    pins = _pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert "ray" in pins
    assert {".venv", ".git", ".whichmodel"} <= set(cfg["rsync_exclude"])


def test_aws_head_runs_no_trial_and_gpu_workers_autoscale():
    cfg = _load("cluster.yaml")
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    (worker_name,) = [n for n in types if n != cfg["head_node_type"]]
    worker = types[worker_name]
    assert worker["resources"]["GPU"] >= 1 and worker["resources"]["CPU"] >= 1
    assert worker["node_config"]["InstanceType"].startswith(("g", "p"))  # a GPU instance
    assert 0 <= worker["min_workers"] < worker["max_workers"] <= cfg["max_workers"]
    assert all(isinstance(v, int) for t in types.values() for v in t["resources"].values())


def test_aws_images_carry_the_ray_and_python_that_setup_cfg_pins():
    cfg = _load("cluster.yaml")
    ray_version = _pins()["ray"]
    images = [cfg["docker"]["head_image"], cfg["docker"]["worker_image"]]
    assert all(img.startswith(f"rayproject/ray:{ray_version}-py311-") for img in images)
    assert images[1].endswith("-gpu")


def test_local_provider_names_placeholder_hosts_and_a_head_without_trials():
    cfg = _load("cluster-local.yaml")
    provider = cfg["provider"]
    assert provider["type"] == "local"
    hosts = [provider["head_ip"], *provider["worker_ips"]]
    assert all(re.fullmatch(r"[A-Z_0-9]+", h) for h in hosts)  # placeholders, no real machine
    assert cfg["max_workers"] == len(provider["worker_ips"])
    head = _start_commands(cfg, "head")
    assert "--num-cpus=0" in head and "--num-gpus=0" in head
    assert "--num-cpus" not in _start_commands(cfg, "worker")  # workers offer all they have
