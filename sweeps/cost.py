"""The compute of a sweep before it runs: FLOPs per image counted on each architecture, the
images each protocol pushes through it, divided by a device rate.

    cost = estimate_plan(plan_sweep("sweeps/configs/vtab1k.yaml"), rate_of(cfg, home))
    cost.total_s, cost.by_model["resnet50.tv_in1k"]["finetune"]

- **FLOPs per image**: ``torch.utils.flop_counter.FlopCounterMode`` over one forward pass of the
  backbone at its own input size (the size it resizes every image to), built with random weights
  on the ``meta`` device (:func:`lightning_modules.hub.build_architecture`, the zoo's architectures):
  nothing is allocated, read or downloaded. A training image costs 3 forward passes (forward,
  and a backward of twice its cost).
- **The work of each trial** (:class:`Work`: FLOPs, optimizer steps, fits), from the task's
  split sizes (train800, val200, its test split) and the sweep's protocols: the probe's one
  frozen pass over train, val and test, then its feature proxies (their own FLOPs on the
  features, :func:`proxy_flops`); the early-stop proxy's short fine-tunes (lrs x repetitions x
  steps x batch, and a validation pass each); the fine-tune's runs (lrs x repetitions: the head
  stage's frozen pass over train800 and its head steps, steps x batch training images, a
  validation and a test pass, the budgeted search's validation curve).
- **Device rate** (:mod:`sweeps.device_rate`): ``resources.device_tflops`` (default an H100's
  dense bf16 peak at 10% utilisation) or ``measured``; a measured rate also has the framework's
  seconds per optimizer step and per fit. Seconds are device seconds: the compute the runs log
  (``time/features``, ``time/proxy/<p>``, ``time/finetune``), not a trial's loading and set-up.

Keys already finished in MLflow are not counted again (``finished``). What is estimated is the
work, not its packing onto devices: a wall-clock on N devices is the device seconds over N, a
lower bound.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sweeps.config import SweepConfig
from sweeps.device_rate import TRAIN_FACTOR, Rate, rate_of
from sweeps.plan import Job, Plan, expand_jobs, pair_key
from whichmodel.errors import WhichModelError

COLUMNS = ("probe", "early_stop", "finetune")  # the protocols' parts, as validate prints them


# --------------------------------------------------------------------------- models and tasks
@dataclass(frozen=True)
class ModelShape:
    """What the cost of a model depends on: FLOPs of one image's forward pass at its input
    size, the feature width and the source classes (LEEP, NCE)."""

    flops: float
    feature_dim: int
    input_size: int
    source_classes: int = 1000


@dataclass(frozen=True)
class TaskShape:
    n_train: int
    n_val: int
    n_test: int
    num_classes: int
    assumed: bool = False  # the test size and classes are assumed (an ImageFolder not here)


def forward_flops(backbone) -> ModelShape:
    """FLOPs of one image's forward pass through the backbone at its input size (counted on the
    ``meta`` device: shapes only)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    size = int(backbone.preprocessing["input_size"])
    backbone = backbone.to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        backbone.features(torch.zeros(1, 3, size, size, device="meta"))
    head = backbone.source_head
    return ModelShape(float(counter.get_total_flops()), int(backbone.feature_dim), size,
                      head.out_features if head is not None else 1000)


@lru_cache(maxsize=256)
def _hub_shape(spec: str) -> ModelShape:
    import torch

    from lightning_modules.hub import build_architecture

    with torch.device("meta"):
        return forward_flops(build_architecture(spec)[0].eval())


@lru_cache(maxsize=256)
def _zoo_shape(arch: str, kwargs: str) -> ModelShape:
    import torch

    from lightning_modules.backbones import create_backbone

    with torch.device("meta"):
        return forward_flops(create_backbone(arch, **json.loads(kwargs)))


def model_shape(name: str, plan: Plan) -> ModelShape | None:
    """The model's :class:`ModelShape` from its architecture (None: a ``local:`` folder that is
    not on this machine)."""
    ref = plan.model_refs.get(name, {"source": "zoo"})
    if ref.get("source", "zoo") == "zoo":
        from sweeps.zoo_config import load_zoo_config

        zoo = load_zoo_config(plan.zoo_path)
        m = zoo.model(name)
        return _zoo_shape(m.arch, json.dumps({"input_size": zoo.image_size, **m.arch_kwargs},
                                             sort_keys=True))
    spec = ref["spec"]
    if not spec.startswith("local:"):
        return _hub_shape(spec)
    meta_file = Path(spec[len("local:"):]) / "meta.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    arch = str(meta.get("arch", ""))
    if ":" in arch:
        return _hub_shape(arch)
    return _zoo_shape(arch, json.dumps(meta.get("arch_kwargs") or {}, sort_keys=True))


def task_shape(name: str, ref: dict[str, Any]) -> TaskShape:
    """A task's split sizes and classes, read from the task registry (an ImageFolder: counted
    in its folder when it is here, else assumed: 1,000 test images, 10 classes)."""
    from lightning_modules.task_data import N_TRAIN, N_VAL
    from sweeps.refs import get_ref_task

    if ref.get("source") == "imagefolder":
        test = Path(ref["path"]) / "test"
        classes = [d for d in test.iterdir() if d.is_dir()] if test.is_dir() else []
        if classes:
            n = sum(1 for d in classes for f in d.iterdir() if f.is_file())
            return TaskShape(N_TRAIN, N_VAL, n, len(classes))
        return TaskShape(N_TRAIN, N_VAL, 1000, 10, assumed=True)
    info = get_ref_task(name, ref).info
    return TaskShape(N_TRAIN, N_VAL, int(info.test_size), int(info.num_classes))


# --------------------------------------------------------------------------- FLOPs of the work
CLOSED_FORM = ("logme", "hscore", "hscore_lw", "transrate")  # share the Gram matrix's spectrum


def proxy_flops(name: str, settings: dict[str, Any], m: ModelShape, t: TaskShape,
                closed_form: int = 1) -> float:
    """Rough FLOPs of one feature proxy on the features (README "Cost before launch"): the
    linear probe's batched SGD (in the row space when D > N), 1-NN's distances, the closed-form
    scores' Gram matrix and its eigendecomposition (shared by the ``closed_form`` of them the
    sweep runs), LEEP's and NCE's joint counts; a proxy not listed here is costed as a
    closed-form one."""
    n, v, d, c = t.n_train, t.n_val, m.feature_dim, t.num_classes
    width = min(n, d)
    if name == "linear":
        lrs, reps = len(settings.get("lrs", [0.1, 0.01])), int(settings.get("repeats", 5))
        batch = min(int(settings.get("batch_size", 256)), n)
        return 6.0 * reps * int(settings.get("steps", 2500)) * batch * width * lrs * c
    if name == "knn":
        return 2.0 * v * n * d
    if name in ("leep", "nce"):
        return 2.0 * n * m.source_classes * c
    return (2.0 * n * d * width + 9.0 * width ** 3) / max(1, closed_form) + 2.0 * n * width * c


@dataclass(frozen=True)
class Work:
    """What a piece of the protocol costs: its FLOPs, its optimizer steps and its
    ``Trainer.fit`` calls (the framework's overhead, where the rate has measured it)."""

    flops: float = 0.0
    steps: float = 0.0
    fits: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.steps + other.steps, self.fits + other.fits)

    def __mul__(self, k: float) -> Work:
        return Work(self.flops * k, self.steps * k, self.fits * k)

    def seconds(self, rate: Rate) -> float:
        return rate.seconds(self.flops, self.steps, self.fits)


def probe_work(cfg: SweepConfig, m: ModelShape, t: TaskShape) -> Work:
    """A probe trial: one frozen pass over train, val and test, then the feature proxies."""
    names = [p for p in cfg.probe.proxies if p != "early_stop"]
    settings = cfg.probe.proxy_settings(cfg.seed)
    shared = sum(p not in ("linear", "knn", "leep", "nce") for p in names)
    forward = m.flops * (t.n_train + t.n_val + t.n_test)
    return Work(forward + sum(proxy_flops(p, settings[p], m, t, shared) for p in names))


def early_stop_work(cfg: SweepConfig, m: ModelShape, t: TaskShape, own_trial: bool = True
                    ) -> Work:
    """The early-stop proxy: per learning rate and repetition a fit of a few training steps and
    a validation pass; the training split's frozen pass when it has its own trial."""
    if "early_stop" not in cfg.probe.proxies:
        return Work()
    e = cfg.probe.early_stop
    runs = len(e.lrs) * e.repeats
    per_run = Work(TRAIN_FACTOR * m.flops * e.steps * e.batch_size + m.flops * t.n_val,
                   e.steps, 1)
    return per_run * runs + Work(m.flops * (t.n_val + (t.n_train if own_trial else 0)))


def finetune_run_work(cfg: SweepConfig, m: ModelShape, t: TaskShape, lr: float, rep: int,
                      train_pass: bool = True, head_stage: bool = True) -> Work:
    """One fine-tune run (a learning rate, a repetition): the frozen pass over train800
    (``train_pass``: once per trial) and the fit of the head steps (``head_stage``: once per
    repetition in a trial, its head shared by the repetition's learning rates), the fit of the
    training steps, the validation and test passes, and the search's validation curve
    (repetition 0)."""
    f = cfg.finetune
    out = Work(m.flops * (t.n_val + t.n_test))
    if f.head_steps > 0:
        head = 6.0 * f.head_steps * min(f.batch_size, t.n_train) * m.feature_dim * t.num_classes
        out += Work(m.flops * t.n_train if train_pass else 0.0)
        if head_stage:
            out += Work(head, f.head_steps, 1)
    if f.steps > 0 and f.trainable != "head":
        out += Work(TRAIN_FACTOR * m.flops * f.steps * f.batch_size, f.steps, 1)
    if cfg.search.enabled and rep == 0 and lr in (cfg.search.lrs or f.lrs):
        out += Work(m.flops * t.n_val * (f.steps // cfg.search.rung_steps))
    return out


def finetune_work(cfg: SweepConfig, m: ModelShape, t: TaskShape, runs) -> Work:
    """A trial's fine-tune runs (the frozen pass once per trial, a head per repetition)."""
    out, reps = Work(), set()
    for i, (lr, rep) in enumerate(runs):
        out += finetune_run_work(cfg, m, t, lr, rep, train_pass=i == 0, head_stage=rep not in reps)
        reps.add(rep)
    return out


def job_work(cfg: SweepConfig, job: Job, m: ModelShape, t: TaskShape) -> Work:
    """The work of one trial of the plan (:func:`sweeps.plan.expand_jobs`)."""
    if job.kind == "probe":
        return probe_work(cfg, m, t)
    if job.kind == "early_stop":
        return early_stop_work(cfg, m, t, own_trial=True)
    if job.kind != "finetune":
        raise ValueError(f"no cost model for a {job.kind!r} trial")
    early = early_stop_work(cfg, m, t, own_trial=False) if job.early_stop else Work()
    return finetune_work(cfg, m, t, job.runs) + early


def pair_seconds(cfg: SweepConfig, m: ModelShape, t: TaskShape, rate: Rate) -> dict[str, float]:
    """A (model, task) pair's estimated seconds by protocol: ``probe`` (its trial and the
    early-stop proxy in a trial of its own) and ``finetune`` (all its runs)."""
    runs = [(float(lr), rep) for lr in cfg.finetune.lrs for rep in range(cfg.finetune.repeats)]
    return {"probe": (probe_work(cfg, m, t) + early_stop_work(cfg, m, t)).seconds(rate),
            "finetune": finetune_work(cfg, m, t, runs).seconds(rate)}


# --------------------------------------------------------------------------- a plan's cost
@dataclass
class PlanCost:
    """The estimated device seconds of a plan's unfinished keys, by model and protocol part
    (``probe``: the frozen pass and the feature proxies; ``early_stop``: that proxy's short
    fine-tunes; ``finetune``: the protocol's runs), the trials by kind, and what was left out."""

    rate: Rate
    by_model: dict[str, dict[str, float]]
    gflops_per_image: dict[str, float | None]
    trials: dict[str, int]
    keys: int
    finished: int | None  # keys finished in MLflow (None: MLflow not asked)
    unknown: list[str] = field(default_factory=list)  # models whose architecture is not here
    assumed_tasks: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, float]:
        return {c: sum(row[c] for row in self.by_model.values()) for c in COLUMNS}

    @property
    def total_s(self) -> float:
        return sum(self.totals.values())


def estimate_plan(plan: Plan, rate: Rate, finished: set[str] | None = None,
                  keys: list[tuple[str, str, str]] | None = None) -> PlanCost:
    """The plan's cost (``keys``: only these of its keys), leaving out ``finished`` pair keys."""
    cfg = plan.cfg
    wanted = keys if keys is not None else plan.keys()
    todo = [k for k in wanted if pair_key(*k) not in (finished or set())]
    jobs = expand_jobs(cfg, todo)
    models = list(dict.fromkeys(m for m, _, _ in wanted))
    shapes = {m: model_shape(m, plan) for m in models}
    tasks = {t: task_shape(t, plan.task_refs.get(t, {})) for t in dict.fromkeys(t for _, t, _ in todo)}
    rows = {m: dict.fromkeys(COLUMNS, 0.0) for m in models if shapes[m] is not None}
    for job in jobs:
        shape = shapes[job.model]
        if shape is None:
            continue
        t = tasks[job.task]
        if job.kind == "finetune":
            rows[job.model]["finetune"] += finetune_work(cfg, shape, t, job.runs).seconds(rate)
            if job.early_stop:
                rows[job.model]["early_stop"] += early_stop_work(
                    cfg, shape, t, own_trial=False).seconds(rate)
        else:
            column = "probe" if job.kind == "probe" else "early_stop"
            rows[job.model][column] += job_work(cfg, job, shape, t).seconds(rate)
    return PlanCost(rate, rows,
                    {m: (s.flops / 1e9 if s is not None else None) for m, s in shapes.items()},
                    dict(Counter(j.kind for j in jobs)), len(wanted),
                    None if finished is None else len(wanted) - len(todo),
                    [m for m in models if shapes[m] is None],
                    [t for t, s in tasks.items() if s.assumed])


def job_seconds(plan: Plan, jobs: list[Job], rate: Rate) -> dict[str, float]:
    """Each trial's estimated seconds by its key ``job.describe()`` (the progress line's);
    trials of models whose architecture is not here are left out."""
    shapes = {m: model_shape(m, plan) for m in dict.fromkeys(j.model for j in jobs)}
    tasks = {t: task_shape(t, plan.task_refs.get(t, {})) for t in dict.fromkeys(j.task for j in jobs)}
    return {j.describe(): job_work(plan.cfg, j, shapes[j.model], tasks[j.task]).seconds(rate)
            for j in jobs if shapes[j.model] is not None}


def architectures(plan: Plan) -> list[tuple[Any, float, int]]:
    """One model of each of the plan's architectures, with random weights on the CPU, with its
    forward FLOPs per image and input size (:func:`sweeps.device_rate.measure_rate`'s input)."""
    out, seen = [], set()
    for name in plan.models:
        shape = model_shape(name, plan)
        ref = plan.model_refs.get(name, {"source": "zoo"})
        key = (ref.get("spec"), shape)
        if shape is None or key in seen or str(ref.get("spec", "")).startswith("local:"):
            continue
        seen.add(key)
        if ref.get("source", "zoo") == "zoo":
            from lightning_modules.backbones import create_backbone
            from sweeps.zoo_config import load_zoo_config

            zoo = load_zoo_config(plan.zoo_path)
            m = zoo.model(name)
            backbone = create_backbone(m.arch, input_size=zoo.image_size, **m.arch_kwargs)
        else:
            from lightning_modules.hub import build_architecture

            backbone = build_architecture(ref["spec"])[0].eval()
        out.append((backbone, shape.flops, shape.input_size))
    return out


def finished_keys(plan: Plan, tracking_uri: str) -> set[str]:
    """The plan's keys MLflow has finished (the experiment's runs; none if it has none yet)."""
    from sweeps.tracking.client import Tracker

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        return set()  # no local store yet (opening one would create it)
    try:
        tracker = Tracker(tracking_uri, plan.cfg.experiment, create=False)
    except WhichModelError:
        return set()
    finished, _ = tracker.runs_by_key({p: plan.cfg.protocol_hash(p) for p in plan.protocols})
    return set(finished)


def plan_cost(plan: Plan, home: Path | None, tracking_uri: str | None = None) -> PlanCost:
    """The plan's cost at its device rate; with ``tracking_uri``, less the keys MLflow has
    finished (``whichmodel validate``; ``--file-only`` asks no server)."""
    finished = finished_keys(plan, tracking_uri) if tracking_uri else None
    return estimate_plan(plan, rate_of(plan.cfg, home), finished)


def measured_by_part(records, keys: list[tuple[str, str, str]]) -> dict[str, float]:
    """The compute the runs of ``keys`` logged, by the estimate's parts: ``probe`` (frozen pass
    and feature proxies), ``early_stop`` and ``finetune``."""
    wanted = {(m, t) for m, t, _ in keys}
    times = records[records["metric"].str.startswith("time/")]
    times = times[[(m, t) in wanted for m, t in zip(times["model"], times["task"])]]
    metric = times["metric"]
    early = metric == "time/proxy/early_stop"
    probe = (metric == "time/features") | (metric.str.startswith("time/proxy/") & ~early)
    return {"probe": float(times.loc[probe, "value"].sum()),
            "early_stop": float(times.loc[early, "value"].sum()),
            "finetune": float(times.loc[metric == "time/finetune", "value"].sum())}


def estimate_vs_measured(plan: Plan, rate: Rate, tracking_uri: str) -> dict[str, Any]:
    """The estimate at ``rate`` of the plan's keys MLflow has finished, against the compute
    their runs logged: seconds by part and the ratio estimate / measured."""
    from sweeps.tracking.client import Tracker

    tracker = Tracker(tracking_uri, plan.cfg.experiment, create=False)
    hashes = {p: plan.cfg.protocol_hash(p) for p in plan.protocols}
    finished, _ = tracker.runs_by_key(hashes)
    keys = [k for k in plan.keys() if pair_key(*k) in finished]
    if not keys:
        raise WhichModelError(f"experiment {plan.cfg.experiment!r} has no finished run of "
                              f"{plan.path} to compare the estimate with; run it first")
    records, _, _ = tracker.records(hashes)
    measured = measured_by_part(records, keys)
    estimated = estimate_plan(plan, rate, keys=keys).totals
    total_m, total_e = sum(measured.values()), sum(estimated.values())
    return {"keys": len(keys), "of": plan.n_keys, "estimated_s": {**estimated, "all": total_e},
            "measured_s": {**measured, "all": total_m},
            "ratio": total_e / total_m if total_m else None,
            "ratio_by_part": {p: (estimated[p] / measured[p] if measured[p] else None)
                              for p in COLUMNS}}
