"""Report speed at a large table's size: 200 models x 15 tasks x 10 proxies (two repetitions of
every fine-tune, 5% of the pairs missing) plus two ChoiceNet prediction tables, B = 1..10.

    .venv/bin/python -m benchmarks.report_speed            # the size above
    .venv/bin/python -m benchmarks.report_speed --quick    # 50 models x 6 tasks x 4 proxies

The last line of stdout is one JSON object: ``report_s`` (``compute_report`` with the noise
resampling, ``format_table`` and the JSON dump) [target <= 10 s on 2 cores], ``write_report_s``
(every file: the figures, the HTML page) [<= 30 s], the sizes, ``met`` and ``machine``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

SIZES = {False: (200, 15, 10), True: (50, 6, 4)}  # models, tasks, proxies by --quick
TARGETS = {"report_s": 10.0, "write_report_s": 30.0}


def synthetic_table(n_models: int, n_tasks: int, n_proxies: int, seed: int = 0
                    ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, pd.DataFrame]]:
    """(records, metadata, ChoiceNet v1/v2 predictions) of a random table with proxies of
    decreasing quality (noise 0.1, 0.2, ...)."""
    rng = np.random.default_rng(seed)
    models = [f"model{i:03d}" for i in range(n_models)]
    tasks = [f"task{j:02d}" for j in range(n_tasks)]
    acc = rng.uniform(0.2, 0.99, (n_models, n_tasks))
    acc[rng.random(acc.shape) < 0.05] = np.nan  # some missing pairs
    mm, tt = np.meshgrid(models, tasks, indexing="ij")
    frames = []
    for metric, values in [("finetune_test_acc", acc),
                           *((f"proxy/p{k}", acc + rng.normal(0, 0.1 * (k + 1), acc.shape))
                             for k in range(n_proxies))]:
        keep = np.isfinite(values).ravel()
        frames.append(pd.DataFrame({"model": mm.ravel()[keep], "task": tt.ravel()[keep],
                                    "metric": metric, "value": values.ravel()[keep]}))
    # two repetitions of every fine-tune: the median has to be taken
    frames.append(frames[0].assign(value=np.clip(frames[0]["value"] + 0.01, 0, 1)))
    records = pd.concat(frames, ignore_index=True)
    metadata = pd.DataFrame({"model": models, "imagenet_acc": rng.uniform(0.5, 0.9, n_models),
                             "params": rng.integers(1, 100, n_models).astype(float)})
    predictions = {f"choicenet_{v}": pd.DataFrame(
        np.clip(acc + rng.normal(0, 0.05, acc.shape), 0, 1), index=models, columns=tasks)
        for v in ("v1", "v2")}
    return records, metadata, predictions


def task_groups(n_tasks: int) -> dict[str, str]:
    return {f"task{j:02d}": ("natural", "specialized", "structured")[j % 3] for j in range(n_tasks)}


def run(quick: bool) -> dict:
    from selection.report.compute import compute_report
    from selection.report.files import write_report
    from selection.report.text import format_table

    n_models, n_tasks, n_proxies = SIZES[quick]
    records, metadata, predictions = synthetic_table(n_models, n_tasks, n_proxies)
    start = time.perf_counter()
    report = compute_report(records, metadata, task_groups=task_groups(n_tasks), max_budget=10,
                            predictions=predictions)
    format_table(report)
    json.dumps(report, sort_keys=True, allow_nan=False)
    report_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_report(report, tmp)
        write_s = time.perf_counter() - start
    out = {"quick": quick, "models": n_models, "tasks": n_tasks, "proxies": n_proxies,
           "strategies": len(report["strategy_order"]), "report_s": round(report_s, 3),
           "write_report_s": round(write_s, 3),
           "targets": {k: f"<= {v}" for k, v in TARGETS.items()},
           "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}}
    out["met"] = {k: out[k] <= v for k, v in TARGETS.items()} if not quick else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report_speed",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller table")
    print(json.dumps(run(parser.parse_args(argv).quick)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
