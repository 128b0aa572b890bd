"""The plan of a sweep: its file checked and resolved, and the trials it needs.

    plan = plan_sweep("sweeps/configs/quickstart.yaml")   # parse and resolve; nothing runs
    metas = check_plan(plan, paths)                        # what run checks before any trial
    jobs = expand_jobs(plan.cfg, todo)                     # one Job per trial

A (model, task, protocol) *pair* is the unit of results: one MLflow run per pair, keyed by
:func:`pair_key` -- the only place that key is written. A :class:`Job` is one trial: a probe of a
pair, or a fine-tune of a pair at one learning rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sweeps.config import (
    HUB_PREFIXES,
    ConfigError,
    ModelEntry,
    SweepConfig,
    load_sweep_config,
)
from sweeps.paths import Paths
from sweeps.refs import (
    check_models,
    check_task_ref,
    model_metadata,
    resolve_model_refs,
    resolve_pools,
    resolve_task_refs,
    uses_rules,
)
from sweeps.zoo_config import load_zoo_config
from whichmodel.errors import WhichModelError

PROTOCOLS = ("probe", "finetune")
#: The most trials one plan may hold: a Tune experiment of a million trials is past what one
#: driver schedules (README, benchmarks: 2,000 trials cost ~60 s of driver time), and a typo
#: (repeats: 10**12) must fail with a count, not by building the list.
MAX_TRIALS = 1_000_000


def pair_key(model: str, task: str, protocol: str) -> str:
    """The key of a pair's MLflow run (tag ``pair_key``): ``model|task|protocol``."""
    return f"{model}|{task}|{protocol}"


@dataclass(frozen=True)
class Job:
    """One trial: ``kind`` is ``probe``, ``finetune``, ``early_stop``, ``search`` or ``pretrain``.

    A fine-tune trial runs one or more ``runs`` of its pair, each a (learning rate, repetition),
    and with ``early_stop`` also the pair's early-stop proxy (a short fine-tune, scheduled as
    fine-tune work); an ``early_stop`` trial runs only that proxy; a search trial has one ``lr``.
    Travels to Tune as a plain dict (:meth:`to_dict`).
    """

    kind: str
    model: str
    task: str = ""
    lr: float | None = None
    runs: tuple[tuple[float, int], ...] = ()
    early_stop: bool = False
    params: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # free-form

    @property
    def protocol(self) -> str:
        """The protocol whose MLflow run this trial's results go to (early-stop: the probe's)."""
        return "probe" if self.kind == "early_stop" else self.kind

    @property
    def pair_key(self) -> str:
        return pair_key(self.model, self.task, self.protocol)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (None, "", {}, (), False)}
        if self.runs:
            out["runs"] = [[float(lr), int(rep)] for lr, rep in self.runs]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        lr = data.get("lr")
        return cls(str(data["kind"]), str(data["model"]), str(data.get("task", "")),
                   None if lr is None else float(lr),
                   tuple((float(a), int(b)) for a, b in data.get("runs") or ()),
                   bool(data.get("early_stop", False)), dict(data.get("params") or {}))

    def describe(self) -> str:
        where = f"{self.model}@{self.task}" if self.task else self.model
        runs = ", ".join(f"lr={lr:g}/rep{rep}" for lr, rep in self.runs)
        extra = [f"lr={self.lr:g}"] if self.lr is not None else []
        extra += [runs] if runs else []
        extra += ["early-stop proxy"] if self.early_stop else []
        return f"{self.kind} {where}" + (f" ({'; '.join(extra)})" if extra else "")


@dataclass
class Plan:
    cfg: SweepConfig
    path: Path
    zoo_path: Path
    models: list[str]
    tasks: list[str]
    pools: dict[str, list[str]]
    model_refs: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_refs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # what is known of each model before it is opened (pool rules read it)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def protocols(self) -> list[str]:
        """The protocols the sweep runs, in order."""
        return [p for p in PROTOCOLS if getattr(self.cfg, p).enabled]

    @property
    def n_keys(self) -> int:
        return len(self.models) * len(self.tasks) * len(self.protocols)

    def keys(self) -> list[tuple[str, str, str]]:
        """Every (model, task, protocol) key of the sweep."""
        return [(m, t, p) for m in self.models for t in self.tasks for p in self.protocols]

    def data_root(self, paths: Paths) -> Path:
        """Where tasks are read and cached: the sweep's ``data.root`` or the home folder's."""
        root = self.cfg.data.root
        return (self.path.parent / root).resolve() if root else paths.data_root


def plan_sweep(config_path: str | Path, *, structure: bool = False,
               catalog: str | Path | None = None) -> Plan:
    """Parse and validate a sweep file and its zoo file; nothing is run or written.

    ``structure``: count every model's backbone parameters and feature width (on the
    architecture, without weights) where the metadata lacks them; pool rules do so anyway.
    ``catalog``: the sweep's protocols over this catalog's models and pools instead of the
    sweep's own (``whichmodel recommend --catalog``)."""
    cfg, zoo_path = load_sweep_config(config_path)
    path = Path(config_path)
    if catalog is not None:
        if not Path(catalog).is_file():
            raise WhichModelError(f"{catalog}: no such catalog file; pass a catalog YAML with "
                                  "'models' (and optional 'pools'), e.g. sweeps/configs/pools/")
        cfg = cfg.model_copy(update={"catalog": str(Path(catalog).resolve()), "models": "all",
                                     "pools": {"all": "all"}})
    zoo = load_zoo_config(zoo_path) if _needs_zoo(cfg, zoo_path) else None
    models, model_refs, catalog_pools = resolve_model_refs(cfg, zoo, path)
    tasks, task_refs = resolve_task_refs(cfg, path)
    metadata = model_metadata(models, model_refs, zoo,
                              structure=structure or uses_rules(cfg, catalog_pools))
    pools = resolve_pools(cfg, models, path, catalog_pools, metadata)
    for key, chosen in (("report.choicenet.probe_model", cfg.report.choicenet.probe_model),
                        ("report.nearest_task.probe_model", cfg.report.nearest_task.probe_model)):
        if chosen is not None and chosen not in models:
            raise ConfigError(f"{path}: key '{key}': {chosen!r} is not one of this sweep's models "
                              f"({', '.join(models)})")
    if not (cfg.probe.enabled or cfg.finetune.enabled):
        raise WhichModelError(f"{path}: key 'probe.enabled' and 'finetune.enabled': both off, "
                              "nothing to run")
    plan = Plan(cfg, path, zoo_path, models, tasks, pools, model_refs, task_refs, metadata)
    check_trials(cfg, plan.keys(), path)
    check_report_names(plan)
    return plan


def _needs_zoo(cfg: SweepConfig, zoo_path: Path) -> bool:
    """A sweep of hub models only may have no zoo file; one naming zoo models needs it."""
    if zoo_path.is_file():
        return True
    if cfg.models == "all":
        return cfg.catalog is None
    return not cfg.catalog and any(
        not isinstance(m, ModelEntry) and not m.startswith(HUB_PREFIXES) for m in cfg.models)


def check_plan(plan: Plan, paths: Paths) -> dict[str, dict[str, Any]]:
    """Everything ``run`` checks before its first trial, writing nothing: every model opens (zoo
    checkpoints built, hub weights that fit), every task's data is there. Returns the models'
    metadata. ``whichmodel validate`` and ``whichmodel run`` both call it."""
    metas = check_models(plan.models, paths, plan.zoo_path, plan.model_refs)
    check_report_names(plan, metas)  # static:<column> needs a model with that column
    data_root = plan.data_root(paths)
    for task in plan.tasks:
        check_task_ref(task, plan.task_refs[task], data_root, download=plan.cfg.data.download)
    return metas


def report_strategies(plan: Plan, metas: dict[str, dict[str, Any]] | None = None
                      ) -> tuple[list[str], list[str], list[str]]:
    """(proxies, learned tables, static columns) the sweep's report will have: its proxies, the
    learned strategies it enables, and the metadata columns a static ranking can read (all of
    them until the models' metadata is known from ``metas``)."""
    from selection.nearest_task import NEAREST_TASK
    from selection.strategies import STATIC_COLUMNS

    cfg = plan.cfg
    proxies = [f"proxy/{p}" for p in cfg.probe.proxies] if cfg.probe.enabled else []
    learned = ["choicenet_v1", "choicenet_v2", "choicenet_v3"] if cfg.report.choicenet.enabled \
        else []
    learned += [NEAREST_TASK] if cfg.report.nearest_task.enabled else []
    columns = list(STATIC_COLUMNS) if metas is None else [
        c for c in STATIC_COLUMNS if any(_number(m.get(c)) for m in metas.values())]
    return proxies, learned, columns


def _number(value: Any) -> bool:
    try:
        return value is not None and float(value) == float(value)
    except (TypeError, ValueError):
        return False


def check_report_names(plan: Plan, metas: dict[str, dict[str, Any]] | None = None) -> None:
    """Every name of ``report.strategies`` and ``report.deltas`` is a strategy this sweep's
    report will have (the registry's, for its proxies, learned strategies and metadata): a
    ConfigError naming the key and the usable names, before any trial rather than after the
    sweep."""
    from selection.learners import ENSEMBLE_PREFIX, ensemble_proxies
    from selection.scoring import parse_delta
    from selection.strategies import STATIC_COLUMNS, STATIC_PREFIX, list_strategies

    report = plan.cfg.report
    proxies, learned, columns = report_strategies(plan, metas)
    usable = list_strategies(proxies, learned, columns)

    def problem(name: str) -> str | None:
        if name.startswith(ENSEMBLE_PREFIX):
            try:
                ensemble_proxies(name, proxies)
            except KeyError as exc:
                return str(exc.args[0])
            return None
        if name in usable:
            return None
        if name.startswith(STATIC_PREFIX) and name[len(STATIC_PREFIX):] in STATIC_COLUMNS:
            return f"{name!r}: no model of this sweep has a {name[len(STATIC_PREFIX):]!r} value"
        return f"unknown strategy {name!r}"

    def check(name: str, key: str) -> None:
        why = problem(name)
        if why is not None:
            raise ConfigError(f"{plan.path}: key '{key}': {why}; this sweep's report has: "
                              f"{', '.join(usable)}, {ENSEMBLE_PREFIX}<p1>+<p2>")

    for i, name in enumerate(report.strategies or []):
        check(name, f"report.strategies[{i}]")
    for i, delta in enumerate(report.deltas or []):
        for name in parse_delta(delta):
            check(name, f"report.deltas[{i}]")
            if report.strategies is not None and name not in report.strategies:
                raise ConfigError(f"{plan.path}: key 'report.deltas[{i}]': {name!r} is not in "
                                  "report.strategies; add it there or drop the comparison")


def count_trials(cfg: SweepConfig, todo: list[tuple[str, str, str]]) -> int:
    """How many trials :func:`expand_jobs` makes of ``todo``, counted without making them."""
    probes = {(m, t) for m, t, p in todo if p == "probe"}
    tunes = {(m, t) for m, t, p in todo if p == "finetune"}
    grouped = cfg.finetune.trials == "per_pair"
    n = len(probes)
    if "early_stop" in cfg.probe.proxies:
        n += len(probes - tunes) if grouped else len(probes)
    runs = len(cfg.finetune.lrs) * cfg.finetune.repeats
    return n + len(tunes) * (1 if grouped else runs)


def check_trials(cfg: SweepConfig, todo: list[tuple[str, str, str]], source: object) -> int:
    """The number of trials of ``todo``; a ConfigError with the count and how to split the plan
    when it is over :data:`MAX_TRIALS`."""
    n = count_trials(cfg, todo)
    if n > MAX_TRIALS:
        raise ConfigError(
            f"{source}: the plan has {n:,} trials, more than {MAX_TRIALS:,}: split it into sweep "
            "files over fewer models or tasks (one tracking.experiment can hold them all), or "
            "lower finetune.repeats or the number of finetune.lrs, or run a pair's fine-tunes in "
            "one trial (finetune.trials: per_pair)")
    return n


def expand_jobs(cfg: SweepConfig, todo: list[tuple[str, str, str]]) -> list[Job]:
    """The trials of the (model, task, protocol) keys to run; probes first, so task-aware rankings
    exist before the fine-tunes finish.

    A probe trial is one frozen forward pass and the feature proxies; the early-stop proxy, a
    short fine-tune, runs as fine-tune work: in the pair's fine-tune trial when
    ``finetune.trials`` is ``per_pair`` and the pair is fine-tuned too, else as its own
    ``early_stop`` trial. ``per_run`` gives each (learning rate, repetition) its own trial, so a
    lost node loses little; ``per_pair`` runs all of a pair's runs in one trial, loading the
    backbone and the task and computing the head stage's features once.
    """
    check_trials(cfg, todo, "the sweep")
    early = "early_stop" in cfg.probe.proxies
    probes = [(m, t) for m, t, p in todo if p == "probe"]
    tunes = [(m, t) for m, t, p in todo if p == "finetune"]
    runs = tuple((float(lr), rep) for lr in cfg.finetune.lrs for rep in range(cfg.finetune.repeats))
    jobs = [Job("probe", m, t) for m, t in probes]
    grouped = cfg.finetune.trials == "per_pair"
    if early:
        jobs += [Job("early_stop", m, t, early_stop=True) for m, t in probes
                 if not (grouped and (m, t) in tunes)]
    for m, t in tunes:
        if grouped:
            jobs.append(Job("finetune", m, t, runs=runs, early_stop=early and (m, t) in probes))
        else:
            jobs += [Job("finetune", m, t, runs=(run,)) for run in runs]
    return jobs


def task_agnostic_orders(plan) -> dict[str, list[list[str]]]:
    """Per pool, task-agnostic's ranking of its models: tie groups, best first (the rule decides
    its approximate ties among the pool's own models)."""
    import pandas as pd

    from selection.rankings import TaskAgnosticStrategy

    keys = ("imagenet_acc", "upstream_size", "params")
    meta = pd.DataFrame([{"model": m, **{k: (plan.metadata.get(m) or {}).get(k) for k in keys}}
                         for m in plan.models]).set_index("model")
    rule = TaskAgnosticStrategy(meta, plan.cfg.report.task_agnostic.tie_tolerance)
    return {p: rule.rank_groups("", list(members)) for p, members in plan.pools.items()}


def plan_json(plan) -> dict:
    """The resolved plan: each model with its metadata, each task with its group, each pool with
    its members (``whichmodel validate --json``)."""
    from collections import Counter

    from sweeps.refs import task_group

    keys = ("params", "feature_dim", "imagenet_acc", "upstream_size", "upstream")
    models = {}
    for m in plan.models:
        meta = plan.metadata.get(m, {})
        models[m] = {**{k: meta.get(k) for k in keys},
                     **{k: v for k, v in meta.items() if k not in keys}}
    return {"sweep": plan.cfg.name, "config": str(plan.path), "models": models,
            "tasks": {t: {"group": task_group(t, plan.task_refs.get(t, {}))} for t in plan.tasks},
            "pools": {p: list(members) for p, members in plan.pools.items()},
            "task_agnostic": task_agnostic_orders(plan),
            "protocols": plan.protocols, "trials": dict(Counter(
                j.kind for j in expand_jobs(plan.cfg, plan.keys())))}
