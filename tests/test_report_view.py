"""The report a person reads: a terminal leaderboard of at most 100 columns, tables split to the
terminal, figures at most 2,000 pixels wide, one self-contained HTML page."""

from __future__ import annotations

import html.parser
import json
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from selection.report.compute import compute_report
from selection.report.files import write_report
from selection.report.html import render_html
from selection.report.leaderboard import format_leaderboard, highlights, leaderboard_markdown, ranked
from selection.report.tables import WIDTH, fit_table
from selection.report.text import format_table
from sweeps.cli import main

GROUPS = ("natural", "specialized", "structured")


def wide_records(n_models: int = 12, n_tasks: int = 24, reps: int = 2, seed: int = 0):
    """A report as wide as a real one: long task names, nine proxies with long names (27
    strategies and more), repeated fine-tunes (so the noise keys and intervals exist)."""
    rng = np.random.default_rng(seed)
    models = [f"model-{i:02d}-with-a-long-name" for i in range(n_models)]
    tasks = [f"task_{j:02d}_{'x' * (j % 7)}" for j in range(n_tasks)]
    proxies = [f"proxy/proxy_number_{k}_long" for k in range(9)]
    skill = rng.uniform(0.3, 0.9, n_models)
    rows = []
    for t in tasks:
        acc = np.clip(skill + rng.normal(0, 0.08, n_models), 0.01, 0.99)
        for i, m in enumerate(models):
            rows += [(m, t, "finetune_test_acc", float(np.clip(acc[i] + rng.normal(0, 0.01), 0, 1)))
                     for _ in range(reps)]
            rows += [(m, t, p, float(acc[i] + rng.normal(0, 0.05 * (k + 1))))
                     for k, p in enumerate(proxies)]
    records = pd.DataFrame(rows, columns=["model", "task", "metric", "value"])
    meta = pd.DataFrame({"model": models, "upstream_size": rng.integers(1, 100, n_models)})
    groups = {t: GROUPS[j % 3] for j, t in enumerate(tasks)}
    return records, meta.set_index("model"), groups


@pytest.fixture(scope="module")
def wide():
    records, meta, groups = wide_records()
    return compute_report(records, meta, task_groups=groups, noise_draws=200)


def test_default_report_lines_are_at_most_100_characters(tmp_path, capsys, monkeypatch):
    records, meta, _ = wide_records()
    records.to_csv(tmp_path / "rec.csv", index=False)
    meta.reset_index().to_csv(tmp_path / "models.csv", index=False)
    monkeypatch.setenv("COLUMNS", "250")  # a wide terminal: the default report stays at 100
    assert main(["report", "--records", str(tmp_path / "rec.csv"), "--models",
                 str(tmp_path / "models.csv"), "--reports-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(map(len, lines)) <= WIDTH
    assert "leaderboard: mean relative regret" in out
    assert f"open: {tmp_path / 'r' / 'rec' / 'report.html'}" in out
    # a records file has no task groups: one line for all the tasks
    assert sum(line.startswith("all tasks (24)") for line in lines) == 1
    assert "relative regret, pool" not in out  # the per-task tables only with --detail


def test_leaderboard_is_sorted_by_b1_marks_within_noise_and_keeps_bounds_apart(wide):
    text = format_leaderboard(wide)
    table = text.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("#"))
    rows = []
    for line in table[header + 2:]:
        if not re.match(r"\d+ ", line):
            break
        rows.append(line.split())
    names = [r[1] for r in rows]
    expected = ranked(wide)
    assert len(names) == len(expected) and "per_task_best" not in expected
    # a long name is shortened (with an ellipsis) so that the line stays at 100 columns
    assert all(e == n or (n.endswith("…") and e.startswith(n[:-1])) for n, e in zip(names, expected))
    b1 = [wide["strategies"][n]["1"]["mean"] for n in expected]
    assert b1 == sorted(b1)
    best = expected[0]
    ci = wide["ci"][best]["1"]
    assert f"{wide['strategies'][best]['1']['mean']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]~" in text
    for row, name in zip(rows, expected):
        line = " ".join(row)
        first = line.index("]")
        assert (line[first + 1:first + 2] == "~") == (name in wide["within_noise"]["1"])
    assert "bounds (they read the task's own results):" in text
    assert [line.split()[0] for line in table if line.startswith(GROUPS)] == list(GROUPS)
    assert any(line.split()[:1] == ["per_task_best"] for line in table)
    md = leaderboard_markdown(wide)
    assert md.count("\n| ") == len(expected) + 2 + 2  # header, align, rows, two bounds
    assert "| 1 | " + best + " | " in md
    short = leaderboard_markdown(wide, limit=2500)  # MLflow keeps a tag of at most 8000
    assert len(short) <= 2500 and "more rows in report.html" in short and "| 1 | " in short


def test_detail_tables_fit_the_terminal(wide, tmp_path):
    for width in (80, 120):
        text = format_table(wide, width=width)
        assert max(map(len, text.splitlines())) <= width
        for name in wide["strategy_order"]:
            assert name in text  # split, not cut
    assert fit_table(["a", "b"], [["x", "1"]], 1, 10) == "a  b\n-  -\nx  1"


def test_highlights_are_the_papers_handful(wide):
    names = highlights(wide)
    best_proxy = ranked(wide, ["proxy"])[0]
    assert names[:3] == ["task_agnostic", best_proxy, f"hybrid:{best_proxy}"]
    assert names[-1] == "random" and len(names) == 5
    assert names[3] == ranked(wide, ["learned"])[0]


def test_every_png_is_at_most_2000_pixels_wide(wide, tmp_path):
    paths = write_report(wide, tmp_path)
    pngs = [p for p in paths.values() if p.suffix == ".png"]
    assert len(pngs) == 7  # regret, B=2, heatmap, budget, zero regret, proxies, compute
    widths = {}
    for path in pngs:
        with Image.open(path) as image:
            widths[path.name] = image.size[0]
            assert image.format == "PNG"
    assert max(widths.values()) <= 2000, widths
    assert min(widths.values()) >= 600, widths  # legible, not squeezed


class _Refs(html.parser.HTMLParser):
    """Every address an HTML page could load or link (attributes and CSS ``url(...)``)."""

    def __init__(self):
        super().__init__()
        self.tags, self.refs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href", "srcset", "action", "data", "poster", "background"):
                self.refs.append(value or "")

    def handle_data(self, data):
        self.refs += re.findall(r"url\(([^)]*)\)|@import\s+([^;]+)", data)


def test_report_html_is_self_contained_and_makes_no_external_request(wide, tmp_path):
    paths = write_report({**wide, "experiment": "wide"}, tmp_path)
    page = paths["html"].read_text()
    parser = _Refs()
    parser.feed(page)
    assert {"script", "link", "iframe", "object", "embed"}.isdisjoint(parser.tags)
    assert parser.refs and all(r.startswith("data:image/png;base64,") for r in parser.refs)
    assert len(parser.refs) == 7  # every figure, embedded
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page.replace("data:", ""))
    assert "default-src 'none'" in page  # and the browser is told to load nothing else
    for heading in ("Leaderboard", "By task group", "Appendix G", "Fine-tune test accuracy",
                    "Noise floor"):
        assert heading in page
    for group in GROUPS:
        assert f"<h3>{group} (8 tasks" in page


def test_report_html_without_noise_or_groups(tmp_path):
    records = pd.DataFrame([("a", "t1", "finetune_test_acc", 0.9), ("b", "t1", "finetune_test_acc", 0.8),
                            ("a", "t2", "finetune_test_acc", 0.5), ("b", "t2", "finetune_test_acc", 0.6)],
                           columns=["model", "task", "metric", "value"])
    report = compute_report(records)
    page = render_html(report, {})
    assert "Leaderboard" in page and "tasks:" not in page  # no task groups, no group tables
    assert json.loads(json.dumps(report)) == report
    assert max(map(len, format_leaderboard(report).splitlines())) <= WIDTH
