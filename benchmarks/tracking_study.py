"""The study's trial results, synthesised at their real size, for the tracking benchmark.

``vtab1k.yaml``'s protocols (every proxy, the paper's fine-tune protocol: 2 learning rates x 5
repetitions, a trial per run) over the 46 models of Renggli et al. 2022 (Appendix A, the
``mapping`` of ``pools/renggli2022.yaml``, with its metadata) and the 19 VTAB-1k tasks: 874 probe
and 874 fine-tune pairs. Each fine-tune run's result carries what a real one does: its
accuracies, a 250-point training-loss curve and its predictions on 2,000 test examples. Numbers
are drawn from a fixed seed (a model's quality, a task's difficulty, noise), and each
repetition's test accuracy is exactly the accuracy of its predictions, as the report checks.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sweeps.plan import Job, expand_jobs, plan_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "sweeps" / "configs"
TEST_EXAMPLES = 2000
CURVE_POINTS = 250
KINDS = ("probe", "early_stop", "finetune")


def study_plan(experiment: str, n_tasks: int | None = None, n_models: int | None = None):
    """(plan, metas): vtab1k.yaml's plan with the paper's 46 models (the first ``n_tasks``
    tasks and ``n_models`` models only, when given)."""
    from dataclasses import replace

    plan = plan_sweep(CONFIGS / "vtab1k.yaml")
    mapping = yaml.safe_load((CONFIGS / "pools" / "renggli2022.yaml").read_text())["mapping"]
    metas = {}
    for entry in mapping:
        name = re.sub(r"[^a-z0-9]+", "-", entry["paper_model"].lower()).strip("-")
        expert = entry["paper_model"].startswith("expert")
        metas[name] = {"arch": "resnetv2_50" if expert else name,
                       "imagenet_acc": entry.get("imagenet_acc"),
                       "upstream": ["jft-subset" if expert else "imagenet-1k"],
                       "upstream_size": 1_281_167, "params": entry["params"],
                       "feature_dim": entry["feature_dim"], "upstream_acc": None,
                       "objective": "supervised"}
    cfg = plan.cfg.model_copy(update={"name": experiment})
    tasks = plan.tasks[:n_tasks] if n_tasks else plan.tasks
    models = list(metas)[:n_models] if n_models else list(metas)
    return replace(plan, cfg=cfg, models=models, tasks=tasks, pools={"all": models},
                   metadata=metas), metas


def study_jobs(plan) -> list[Job]:
    """Every trial of the plan, as the driver expands them (probes, early stops, a fine-tune
    trial per (learning rate, repetition))."""
    return expand_jobs(plan.cfg, plan.keys())


def trial_result(job: Job, plan, seed: int = 0) -> dict[str, Any]:
    """A finished trial's metrics, as :func:`sweeps.trials.run_trial` returns them."""
    m, t = plan.models.index(job.model), plan.tasks.index(job.task)
    runs = [v for lr, rep in job.runs for v in (int(lr * 1e6), rep)]
    rng = np.random.default_rng([seed, m, t, KINDS.index(job.kind), *runs])
    quality = 0.55 + 0.35 * ((m * 37) % 46) / 46 - 0.2 * ((t * 11) % 19) / 19
    start = 1_700_000_000.0 + 60.0 * (m * len(plan.tasks) + t)
    out: dict[str, Any] = {"started_at": start, "ended_at": start + 30.0,
                           "task_digest": f"{t:016x}", "time/trial": 30.0}
    if job.kind == "probe":
        for proxy in plan.cfg.probe.proxies:
            if proxy != "early_stop":
                out[f"proxy/{proxy}"] = float(quality + rng.normal(0, 0.05))
                out[f"time/proxy/{proxy}"] = float(rng.uniform(0.1, 2.0))
        out["time/features"] = float(rng.uniform(5, 20))
        return out
    if job.kind == "early_stop":
        out["proxy/early_stop"] = float(quality + rng.normal(0, 0.05))
        out["time/proxy/early_stop"] = float(rng.uniform(1, 5))
        return out
    n_classes = 10
    labels = np.random.default_rng([seed, t]).integers(0, n_classes, TEST_EXAMPLES)
    curves, preds = {}, {}
    for lr, rep in job.runs:
        key = f"lr_{lr:g}/rep{rep}"
        acc = float(np.clip(quality + rng.normal(0, 0.02) - (0.03 if lr < 0.005 else 0), 0, 1))
        right = rng.random(TEST_EXAMPLES) < acc
        pred = np.where(right, labels, (labels + 1) % n_classes)
        preds[key] = pred.tolist()
        out[f"{key}/test_acc"] = float((pred == labels).mean())
        out[f"{key}/val_acc"] = float(np.clip(acc + rng.normal(0, 0.01), 0, 1))
        steps = np.linspace(0, 2999, CURVE_POINTS).astype(int)
        curves[key] = [[int(s), float(2.3 * np.exp(-s / 800) + 0.1 + rng.normal(0, 0.02))]
                       for s in steps]
    out.update({"curves": json.dumps(curves), "test_predictions": json.dumps(preds),
                "test_labels": json.dumps(labels.tolist()), "time/finetune": 60.0 * len(job.runs)})
    return out
