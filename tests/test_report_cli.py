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
