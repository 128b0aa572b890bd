"""How much of a fine-tune trial's wall time is training: the quickstart's fine-tune trials run
through Ray Tune with the sweep's own trial body, both trial layouts side by side.

``finetune_efficiency`` [>= 0.8]
    Seconds inside training steps (batch start to batch end: forward, backward, optimizer, for
    the head stage, the full fine-tune and the early-stop proxy's short fine-tunes) and
    evaluation (validation curve, final validation and test accuracy), summed over the trials,
    over the trials' wall time (the trial function from entry to return: loading the backbone
    and the task, the head stage's frozen features, copies of the backbone, Trainer set-up and
    teardown, data loading between steps all count against it). The quickstart's fine-tune
    profile (``sweeps/configs/quickstart.yaml``) and its layout, ``per_pair``: one trial per pair
    runs both learning rates x both repetitions and the pair's early-stop proxy.
``finetune_efficiency_per_run``
    The same profile and runs laid out as before this layout existed: one trial per (learning
    rate, repetition) and the early-stop proxy as its own trial; each loads the backbone and the
    task and computes the head stage's features again.
``finetune_efficiency_sweep`` / ``..._per_run_sweep`` (info)
    The same seconds over (sweep wall time x concurrent trials): Tune's start and hand-over
    between trials count against it too.

Models: the quickstart zoo's two architectures (``cnn``, ``resnet``) with random weights (a
fine-tune's cost does not depend on what the weights are), built in a temp dir; tasks: offline
tasks built there (quick: 1, full: 2); 2 CPUs, one per trial, as the quickstart runs; each
layout on a fresh local Ray whose prestarted workers have preloaded torch and Lightning.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.harness import BenchSink, log, timed_sweep

CONFIGS = Path(__file__).resolve().parents[1] / "sweeps" / "configs"
ZOO = """
name: bench-zoo
image_size: 32
models:
  - {name: bench-cnn, arch: cnn, objective: none}
  - {name: bench-resnet, arch: resnet, objective: none}
"""


def _setup(root: Path, n_tasks: int):
    from lightning_modules.offline import build_suite
    from lightning_modules.tasks import list_tasks
    from sweeps.config import load_sweep_config
    from sweeps.trials import TrialSettings, build_model
    from sweeps.zoo_config import load_zoo_config

    cfg, _ = load_sweep_config(CONFIGS / "quickstart.yaml")
    tasks = list_tasks(kind="offline")[:n_tasks]
    build_suite(root / "data", tasks, image_size=cfg.image_size, seed=cfg.seed)
    (root / "zoo.yaml").write_text(ZOO)
    zoo = load_zoo_config(root / "zoo.yaml")
    models = [m.name for m in zoo.models]
    for name in models:
        build_model(zoo, name, root / "zoo", root / "data")
    return cfg, TrialSettings(cfg, str(root / "data"), str(root / "zoo")), models, tasks


def _layout(cfg, models, tasks, trials: str):
    from sweeps.plan import expand_jobs

    cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"trials": trials})})
    keys = [(m, t, p) for m in models for t in tasks for p in ("probe", "finetune")]
    return cfg, [j for j in expand_jobs(cfg, keys) if j.kind in ("finetune", "early_stop")]


def _measure(settings, jobs, root: Path, name: str) -> dict[str, Any]:
    """The jobs on a fresh local Ray (2 CPUs) whose prestarted workers have finished preloading,
    as a sweep's trials find them."""
    from benchmarks.harness import local_ray
    from sweeps.trials import run_trial
    from sweeps.tune_runner import settled_idle_workers

    with local_ray(root / name, 2):
        settled_idle_workers()
        wall, done = timed_sweep(run_trial, jobs, root, name, BenchSink(None, "", "finetune"),
                                 "finetune", settings, max_concurrent_trials=2)
    if len(done) != len(jobs):
        raise RuntimeError(f"{name}: {len(done)}/{len(jobs)} fine-tune trials finished")
    inside = sum(m["time/train_eval"] for _, m in done)
    trial_s = sum(m["time/trial"] for _, m in done)
    return {"trials": len(jobs), "runs": sum(max(1, len(j.runs)) for j in jobs),
            "train_eval_s": inside, "trial_s": trial_s, "sweep_wall_s": wall,
            "efficiency": inside / trial_s, "sweep_efficiency": inside / (2 * wall)}


def phase_efficiency(args, root: Path) -> dict[str, Any]:
    from sweeps.trials import TrialSettings

    start = time.perf_counter()
    cfg, settings, models, tasks = _setup(root / "eff", 1 if args.quick else 2)
    log(f"efficiency: zoo and tasks built in {time.perf_counter() - start:.1f}s")
    out = {"profile": cfg.finetune.profile, "models": models, "tasks": tasks,
           "lrs": list(cfg.finetune.lrs), "repeats": cfg.finetune.repeats,
           "steps": cfg.finetune.steps, "head_steps": cfg.finetune.head_steps,
           "batch_size": cfg.finetune.batch_size}
    for layout in ("per_run", "per_pair"):
        lcfg, jobs = _layout(cfg, models, tasks, layout)
        lsettings = TrialSettings(lcfg, settings.data_root, settings.zoo_root)
        out[layout] = _measure(lsettings, jobs, root, f"eff-{layout}")
        log(f"efficiency {layout}: {out[layout]}")
    return {"finetune_efficiency": out["per_pair"]["efficiency"],
            "finetune_efficiency_per_run": out["per_run"]["efficiency"],
            "finetune_efficiency_sweep": out["per_pair"]["sweep_efficiency"],
            "finetune_efficiency_per_run_sweep": out["per_run"]["sweep_efficiency"],
            "efficiency": out}
