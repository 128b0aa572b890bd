"""The public tables (sweeps/public/): each is what its README says it is, reads by name, and the
proxy benchmark over them prints one table within 100 columns."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from selection.records import read_models_csv, read_records_csv
from sweeps import public
from sweeps.cli import main


def readme_claims() -> dict[str, dict[str, object]]:
    """Per ``## <table>`` section of the README: its stated rows, models, tasks and metrics."""
    claims: dict[str, dict[str, object]] = {}
    current = None
    for line in (public.folder() / "README.md").read_text().splitlines():
        if line.startswith("## "):
            current = claims.setdefault(line[3:].strip(), {})
        elif current is not None and (m := re.match(r"- rows: (\d+)$", line)):
            current["rows"] = int(m.group(1))
        elif current is not None and (m := re.match(r"- (models|tasks) \((\d+)\): (.+)$", line)):
            names = [n.strip() for n in m.group(3).split(",")]
            assert len(names) == int(m.group(2)), f"{m.group(1)} count in the README"
            current[m.group(1)] = names
        elif current is not None and (m := re.match(r"- metrics: (.+)$", line)):
            current["metrics"] = [n.strip() for n in m.group(1).split(",")]
    return claims


@pytest.mark.parametrize("name", public.list_tables())
def test_each_public_table_is_what_its_readme_states(name):
    claim = readme_claims()[name]
    table = public.get_table(name)
    records = read_records_csv(table.records)  # the records rules: accuracies refused outside [0, 1]
    assert len(records) == claim["rows"]
    assert sorted(records["model"].unique()) == sorted(claim["models"])
    assert sorted(records["task"].unique()) == sorted(claim["tasks"])
    assert sorted(records["metric"].unique()) == sorted(claim["metrics"])
    acc = records.loc[records["metric"].str.endswith("acc"), "value"].to_numpy(dtype=float)
    assert len(acc) and ((acc >= 0) & (acc <= 1)).all()
    # one fine-tune accuracy per (model, task): a published table has no repetitions
    truth = records[records["metric"] == "finetune_test_acc"]
    assert not truth.duplicated(["model", "task"]).any()
    assert table.models is not None
    meta = read_models_csv(table.models)
    assert sorted(meta.index) == sorted(claim["models"])
    if "imagenet_acc" in meta.columns:
        imagenet = meta["imagenet_acc"].to_numpy(dtype=float)
        assert ((imagenet >= 0) & (imagenet <= 1)).all()


def test_every_table_the_readme_describes_is_shipped_and_package_data():
    described = {n for n, c in readme_claims().items() if "rows" in c}
    assert described == set(public.list_tables())
    cfg = (public.folder().parents[1] / "setup.cfg").read_text()
    assert "sweeps.public = *.csv, *.md" in cfg


def test_report_reads_a_public_table_by_name_and_refuses_an_unknown_one(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["report", "--records", "public:modelspider10", "--reports-dir",
                 str(tmp_path / "r"), "--format", "json", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert len(report["models"]) == 10 and len(report["tasks"]) == 8
    assert {"proxy/logme", "static:params", "static:imagenet_acc"} <= set(report["strategy_order"])
    assert (tmp_path / "r" / "modelspider10" / "regret.json").is_file()
    capsys.readouterr()
    assert main(["report", "--records", "public:nope", "--reports-dir", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "public:nope: no such public table" in err and "public:logme11" in err
    assert main(["report", "--records", "public:all", "--reports-dir", str(tmp_path / "r2")]) == 2
    assert "a report reads one table" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def _toy_table(tmp_path, n_tasks: int = 12):
    """6 models; proxy/oracle is the accuracy itself, proxy/backwards its negative; the largest
    model is the worst on every task, so static:params is the worst ranking."""
    rng = np.random.default_rng(0)
    rows, models = [], [f"m{i}" for i in range(6)]
    for t in range(n_tasks):
        acc = np.sort(rng.uniform(0.5, 0.95, len(models)))[::-1]  # m0 best ... m5 worst
        for m, a in zip(models, acc):
            rows += [(m, f"t{t}", "finetune_test_acc", round(float(a), 4)),
                     (m, f"t{t}", "proxy/oracle", round(float(a), 4)),
                     (m, f"t{t}", "proxy/backwards", -round(float(a), 4))]
    pd.DataFrame(rows, columns=["model", "task", "metric", "value"]).to_csv(
        tmp_path / "toy.csv", index=False)
    pd.DataFrame({"model": models, "params": [1e6 * (i + 1) for i in range(6)]}).to_csv(
        tmp_path / "toy_models.csv", index=False)
    return f"{tmp_path / 'toy.csv'},{tmp_path / 'toy_models.csv'}"


def test_benchmark_names_who_beats_the_static_baseline_and_random(tmp_path, capsys):
    ref = _toy_table(tmp_path)
    assert main(["benchmark-proxies", "--records", ref, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    toy = out["tables"]["toy"]
    assert toy["static_baseline"] == {"1": "static:params", "2": "static:params",
                                      "3": "static:params"}
    oracle = toy["strategies"]["proxy/oracle"]
    for b in ("1", "2", "3"):
        assert oracle["regret"][b]["mean"] == 0.0
        assert oracle["regret"][b]["p_beats_static"] >= 0.95
        assert oracle["regret"][b]["p_beats_random"] >= 0.95
        assert toy["strategies"]["proxy/backwards"]["regret"][b]["p_beats_random"] < 0.5
    assert oracle["weighted_tau"] == pytest.approx(1.0)
    assert oracle["weighted_tau_scipy_default"] == pytest.approx(1.0)
    assert out["across"]["proxy/oracle"] == {"tables": 1, "wins": 1, "beats_static": 1,
                                             "mean_rank": 1.0}
    assert main(["benchmark-proxies", "--records", ref]) == 0
    text = capsys.readouterr().out
    assert max(map(len, text.splitlines())) <= 100
    oracle_row = next(line for line in text.splitlines() if line.startswith("proxy/oracle"))
    assert oracle_row.count(" sr") == 3  # beats the static baseline and random at every B
    assert "beat the static baseline at P >= 0.95: B = 1: oracle; B = 2: oracle; B = 3: oracle" \
        in text


@pytest.mark.slow
def test_benchmark_of_every_public_table_fits_100_columns(capsys):
    assert main(["benchmark-proxies", "--records", "public:all"]) == 0
    text = capsys.readouterr().out
    assert max(map(len, text.splitlines())) <= 100
    for name in public.list_tables():
        assert f"\n{name}: " in text
    assert "across tables" in text and "proxy/logme" in text
