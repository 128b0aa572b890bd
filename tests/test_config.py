"""Sweep-file validation: every mistake is one line naming the file and the key, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from selection.pools import PoolError
from sweeps.cli import main
from sweeps.config import ConfigError, load_sweep_config
from sweeps.plan import plan_sweep

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
    with pytest.raises(PoolError, match=r"sweep\.yaml: key 'pools\.p\[0\]'"):
        plan_sweep(path)


def test_protocol_hash_changes_with_settings_only():
    cfg, _ = load_sweep_config(CONFIGS / "quickstart.yaml")
    same = cfg.model_copy(update={"description": "other words"})
    other = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"steps": 7})})
    assert cfg.protocol_hash("finetune") == same.protocol_hash("finetune")
    assert cfg.protocol_hash("finetune") != other.protocol_hash("finetune")
    assert cfg.protocol_hash("probe") == other.protocol_hash("probe")


def test_cli_validate_exit_codes(tmp_path, capsys, home):
    # The shipped quickstart, before 'zoo build': run would stop on the first unbuilt model, so
    # validate does too, saying what to run; nothing is written.
    assert main(["validate", str(CONFIGS / "quickstart.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "model 'cnn-generalist' is not built; run 'whichmodel zoo build" in err
    assert len(err.splitlines()) == 1 and not home.exists()
    bad = _write(tmp_path, "name: s\nmodels: [nope]\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("whichmodel: error: ") and str(bad) in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("key, block", [
    ("finetune.lrs", "finetune:\n  lrs: [0.01, 0.01]\n"),
    ("probe.linear.lrs", "probe:\n  linear:\n    lrs: [0.1, 0.1]\n"),
    ("probe.early_stop.lrs", "probe:\n  early_stop:\n    lrs: [0.001, 0.01, 0.001]\n"),
    ("search.lrs", "search:\n  lrs: [0.01, 0.01]\n"),
    ("probe.proxies", "probe:\n  proxies: [linear, knn, linear]\n"),
])
def test_a_repeated_grid_value_is_one_line_naming_the_key_exit_2(tmp_path, capsys, key, block):
    path = _write(tmp_path, "name: s\n" + block)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"key '{key}'" in err and "listed twice" in err, err


def test_validate_checks_the_task_data_run_needs_and_writes_nothing(tmp_path, capsys, home):
    from sweeps.trials import build_model
    from sweeps.zoo_config import load_zoo_config

    (tmp_path / "zoo.yaml").write_text(
        "models:\n  - {name: control, arch: cnn, arch_kwargs: {width: 4}, objective: none}\n")
    build_model(load_zoo_config(tmp_path / "zoo.yaml"), "control", home / "zoo", home / "data")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nmodels: [control]\n"
                     "tasks: [{name: mine, path: data/mine, group: natural}]\n")
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    assert main(["validate", str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "data" / "mine") in err, err
    for split, n in (("train", 3), ("test", 2)):
        for label in ("a", "b"):
            folder = tmp_path / "data" / "mine" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.png").write_bytes(b"not decoded by validate")
    assert main(["validate", str(sweep)]) == 0
    assert "ok: sweep 's', 1 models x 1 tasks" in capsys.readouterr().out
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before
    assert not (tmp_path / "data" / "mine" / "cache").exists()
