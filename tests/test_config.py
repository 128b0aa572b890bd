"""Sweep-file validation: every mistake is one line naming the file and the key, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.config import ConfigError, load_sweep_config
from sweeps.driver import plan_sweep

CONFIGS = Path(__file__).parents[1] / "sweeps" / "configs"


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "zoo.yaml").write_text((CONFIGS / "zoo.yaml").read_text())
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_validate():
    plan = plan_sweep(CONFIGS / "quickstart.yaml")
    assert len(plan.models) >= 10 and len(plan.tasks) >= 9
    assert set(plan.pools) >= {"all"}


def test_unknown_nested_key_is_named_with_its_path(tmp_path):
    path = _write(tmp_path, "name: s\nfinetune:\n  lrz: [0.1]\n")
    with pytest.raises(ConfigError) as err:
        load_sweep_config(path)
    msg = str(err.value)
    assert str(path) in msg and "'finetune.lrz'" in msg and "unknown key" in msg
    assert "\n" not in msg


def test_wrong_type_is_named_with_its_path(tmp_path):
    path = _write(tmp_path, "name: s\nprobe:\n  linear:\n    steps: many\n")
    with pytest.raises(ConfigError, match=r"'probe\.linear\.steps'.*integer"):
        load_sweep_config(path)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "name: s\nmodels: [a, b\ntasks: all\n")
    with pytest.raises(ConfigError, match=r"sweep\.yaml: malformed YAML at line \d+"):
        load_sweep_config(path)


def test_missing_name_is_reported(tmp_path):
    path = _write(tmp_path, "tasks: all\n")
    with pytest.raises(ConfigError, match=r"'name': required key missing"):
        load_sweep_config(path)


def test_unknown_model_lists_the_known_names(tmp_path):
    path = _write(tmp_path, "name: s\nmodels: [cnn-generalist, resnet-huge]\n")
    with pytest.raises(ConfigError) as err:
        plan_sweep(path)
    msg = str(err.value)
    assert "'models[1]'" in msg and "'resnet-huge'" in msg and "cnn-expert-shapes" in msg


def test_unknown_task_lists_the_known_names(tmp_path):
    path = _write(tmp_path, "name: s\ntasks: [digits, cifar]\n")
    with pytest.raises(ConfigError, match=r"'tasks\[1\]': unknown task 'cifar'; known: .*digits"):
        plan_sweep(path)


def test_pool_member_outside_the_sweep_is_refused(tmp_path):
    path = _write(tmp_path, "name: s\nmodels: [cnn-random]\npools: {p: [cnn-generalist]}\n")
    with pytest.raises(ConfigError, match=r"'pools\.p\[0\]'"):
        plan_sweep(path)


def test_protocol_hash_changes_with_settings_only():
    cfg, _ = load_sweep_config(CONFIGS / "quickstart.yaml")
    same = cfg.model_copy(update={"description": "other words"})
    other = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"steps": 7})})
    assert cfg.protocol_hash("finetune") == same.protocol_hash("finetune")
    assert cfg.protocol_hash("finetune") != other.protocol_hash("finetune")
    assert cfg.protocol_hash("probe") == other.protocol_hash("probe")


def test_cli_validate_exit_codes(tmp_path, capsys):
    assert main(["validate", str(CONFIGS / "quickstart.yaml")]) == 0
    assert "ok" in capsys.readouterr().out
    bad = _write(tmp_path, "name: s\nmodels: [nope]\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("whichmodel: error: ") and str(bad) in err and len(err.splitlines()) == 1
