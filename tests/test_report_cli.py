"""`whichmodel report --records`: a report from files, and bad files refused with nothing written."""

from __future__ import annotations

import json

import pytest

from sweeps.cli import main

GOOD = """model,task,metric,value
a,t1,finetune_test_acc,0.8
b,t1,finetune_test_acc,0.9
a,t1,proxy/knn,0.5
b,t1,proxy/knn,0.4
a,t2,finetune_test_acc,0.7
b,t2,finetune_test_acc,0.6
a,t2,proxy/knn,0.2
b,t2,proxy/knn,0.3
"""


def test_report_from_records_file_prints_json(tmp_path, capsys):
    (tmp_path / "rec.csv").write_text(GOOD)
    code = main(["report", "--records", str(tmp_path / "rec.csv"), "--format", "json",
                 "--output", "-", "--reports-dir", str(tmp_path / "r")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    # knn picks a on t1 (regret (0.9-0.8)/(1-0.8) = 0.5) and b on t2 (regret (0.7-0.6)/0.4)
    per_task = report["strategies"]["proxy/knn"]["1"]["per_task"]
    assert per_task == {"t1": pytest.approx(0.5), "t2": pytest.approx(0.25)}


def test_percent_scale_records_are_refused_naming_the_line(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("model,task,metric,value\na,t1,finetune_test_acc,80\n")
    code = main(["report", "--records", str(tmp_path / "bad.csv"), "--reports-dir",
                 str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "line 2" in err and "divide percentages by 100" in err
    assert not (tmp_path / "r").exists()  # nothing written


def test_a_records_table_with_proxies_ranks_with_the_records_learner_and_the_ensemble(
        tmp_path, capsys):
    rows = ["model,task,metric,value"]
    for t, offset in (("t1", 0.0), ("t2", 0.1), ("t3", -0.1)):
        for m, acc in (("a", 0.6), ("b", 0.7), ("c", 0.8)):
            rows += [f"{m},{t},finetune_test_acc,{acc + offset:.2f}",
                     f"{m},{t},proxy/knn,{acc:.2f}", f"{m},{t},proxy/logme,{2 * acc:.2f}"]
    (tmp_path / "rec.csv").write_text("\n".join(rows) + "\n")
    assert main(["report", "--records", str(tmp_path / "rec.csv"), "--format", "json",
                 "--output", "-", "--reports-dir", str(tmp_path / "r")]) == 0
    report = json.loads(capsys.readouterr().out)
    for name in ("ensemble:all", "choicenet_records"):
        assert name in report["strategy_order"]
        # both proxies order the models as their accuracy does: no regret
        assert report["strategies"][name]["1"]["mean"] == 0.0
        assert report["strategy_seconds"][name] >= 0.0


def test_public_logme_table_reports_with_the_records_learner(tmp_path):
    """The public table of LogME's 11 x 11 published fine-tune accuracies (public:logme11, its
    metadata read with it) reports through the CLI with the records learner, the proxy, its
    hybrid and task-agnostic."""
    out = tmp_path / "report.json"
    rc = main(["report", "--records", "public:logme11", "--reports-dir", str(tmp_path / "r"),
               "--format", "json", "--output", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert len(report["tasks"]) == 11 and len(report["models"]) == 11
    assert {"choicenet_records", "proxy/linear", "hybrid:proxy/linear", "task_agnostic"} <= set(
        report["strategy_order"])
    assert report["best_model"]["aircraft"] == "resnet152"  # 86.29 in the published table
    assert report["strategies"]["per_task_best"]["1"]["mean"] == 0
    for name in ("choicenet_records", "proxy/linear"):
        assert report["strategies"][name]["1"]["mean"] < report["strategies"]["random"]["1"]["mean"]
