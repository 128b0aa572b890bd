"""``whichmodel recommend --compute-budget 2h``: the largest B whose estimated compute fits.

    recommend("faces", compute_budget="90m", config="sweeps/configs/quickstart.yaml")

Before anything runs, each model of the pool gets an estimated compute on the new task
(:mod:`sweeps.cost`: FLOPs per image x images / the device rate) for its probe and for its
fine-tune, calibrated on the experiment's finished runs: per protocol, the seconds they logged
over what the same model estimates for them (``calibration``; none finished: the FLOP model
alone). A key MLflow has finished costs nothing now. The probes count only when the strategy
reads them (a task-aware strategy: a proxy, a hybrid, an ensemble, the records learner, ChoiceNet
v3); a strategy that does not (task-agnostic, a static ranking, ChoiceNet v1/v2, the nearest task)
runs none. The picks are not known before the ranking, so B is the largest number of the pool's
*costliest* unfinished fine-tunes that fit with the probes: whichever models the ranking picks,
the estimate holds. A budget too small for the probes and one fine-tune is a one-line error,
before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from selection.report.costs import probes_used
from whichmodel.durations import format_duration
from whichmodel.errors import WhichModelError


@dataclass
class ComputePlan:
    """What ``--compute-budget`` decided before running, and on what estimates."""

    budget_s: float
    budget: int  # B
    needs_probes: bool
    probe_s: float  # the probes to run (estimated; 0 without probes or all reused)
    finetune_s: dict[str, float]  # each pool model's fine-tune to run (0: finished already)
    estimated_s: float  # the probes and the B costliest fine-tunes
    calibration: dict[str, Any] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)  # keys MLflow had before the call

    def doc(self) -> dict[str, Any]:
        return {"probe_s": self.probe_s, "finetune_s": self.finetune_s,
                "needs_probes": self.needs_probes, "calibration": self.calibration}


def needs_probes(strategy: str, proxies: list[str]) -> bool:
    """Whether the strategy reads the task's probe scores (an unknown cost model: assume so)."""
    used = probes_used(strategy, proxies)
    return used is None or bool(used)


def choose_budget(budget_s: float, probe_s: float, finetune_s: Mapping[str, float],
                  with_probes: bool, what: str = "--compute-budget") -> tuple[int, float]:
    """(B, estimated seconds): the largest B whose probes (``with_probes``) and ``B`` costliest
    fine-tunes fit ``budget_s``; a budget too small for one is a WhichModelError naming the
    estimates (nothing has run)."""
    costliest = sorted(finetune_s.values(), reverse=True)
    fixed = probe_s if with_probes else 0.0
    b, total = 0, fixed
    while b < len(costliest) and total + costliest[b] <= budget_s:
        total += costliest[b]
        b += 1
    if b == 0:
        need = fixed + (costliest[0] if costliest else 0.0)
        probes = f"the pool's probes ~{format_duration(fixed)} and " if with_probes else ""
        raise WhichModelError(
            f"{what} {format_duration(budget_s)}: too small for one fine-tune: {probes}the "
            f"costliest fine-tune the ranking may pick ~{format_duration(costliest[0] if costliest else 0.0)} "
            f"(estimated); give at least {format_duration(need)}, or --budget B")
    return b, total


def calibration(records, plan, estimate) -> dict[str, Any]:
    """Per protocol, the seconds the experiment's finished runs logged over what ``estimate(model,
    task, protocol)`` (seconds, or None) gives for them: ``{probe|finetune: {factor, runs}}``
    (factor 1.0 and 0 runs where none: the FLOP model alone)."""
    sums: dict[str, list[float]] = {"probe": [0.0, 0.0, 0], "finetune": [0.0, 0.0, 0]}
    if records is not None and not records.empty:
        times = records[records["metric"].str.startswith("time/")]
        for (model, task), rows in times.groupby(["model", "task"]):
            values = dict(zip(rows["metric"], rows["value"]))
            probe = [v for k, v in values.items() if k == "time/features" or k.startswith("time/proxy/")]
            for protocol, measured in (("probe", sum(probe) if "time/features" in values else None),
                                       ("finetune", values.get("time/finetune"))):
                est = estimate(model, task, protocol) if measured is not None else None
                if est:
                    sums[protocol][0] += float(measured)
                    sums[protocol][1] += est
                    sums[protocol][2] += 1
    return {p: {"factor": (s[0] / s[1] if s[1] > 0 else 1.0), "runs": int(s[2])}
            for p, s in sums.items()}


def plan_compute(req, budget_s: float, records, finished: set[str], stream) -> ComputePlan:
    """The :class:`ComputePlan` of a checked request (``recommend``'s ``req``) from the
    experiment's ``records`` (None: none) and its ``finished`` keys: estimates, calibration, B;
    writes nothing."""
    from sweeps.cost import model_shape, pair_seconds, task_shape
    from sweeps.device_rate import rate_of
    from sweeps.plan import pair_key

    plan, cfg = req.plan, req.plan.cfg
    rate = rate_of(cfg, req.paths.home)
    shapes: dict[str, Any] = {}

    def estimate(model: str, task: str, protocol: str) -> float | None:
        ref = req.sub.task_refs.get(task)
        if model not in plan.models and model not in req.members or ref is None:
            return None
        if model not in shapes:
            shapes[model] = model_shape(model, plan)
        if shapes[model] is None:
            return None
        return pair_seconds(cfg, shapes[model], task_shape(task, ref), rate)[protocol]

    factors = calibration(records, plan, estimate)
    probes = needs_probes(req.strategy, req.proxies)
    unknown = [m for m in req.members if estimate(m, req.task, "probe") is None]
    if unknown:
        raise WhichModelError(f"--compute-budget: no cost estimate for {', '.join(unknown)} (its "
                              "architecture is not on this machine); use --budget B")
    probe_s = sum(estimate(m, req.task, "probe") * factors["probe"]["factor"]
                  for m in req.members if pair_key(m, req.task, "probe") not in finished)
    tunes = {m: (0.0 if pair_key(m, req.task, "finetune") in finished
                 else estimate(m, req.task, "finetune") * factors["finetune"]["factor"])
             for m in req.members}
    b, total = choose_budget(budget_s, probe_s, tunes, probes)
    cp = ComputePlan(budget_s, b, probes, probe_s if probes else 0.0, tunes, total,
                     {**factors, "device_tflops": rate.tflops, "rate_source": rate.source},
                     finished)
    print(format_plan(cp, req.task, len(req.members)), file=stream, flush=True)
    return cp


def format_plan(cp: ComputePlan, task: str, n_models: int) -> str:
    """The plan ``--compute-budget`` prints before running."""
    probe = (f"probes of the pool ~{format_duration(cp.probe_s)}" if cp.needs_probes
             else "no probes (the strategy does not read them)")
    costliest = max(cp.finetune_s.values()) if cp.finetune_s else 0.0
    calib = cp.calibration
    how = ", ".join(f"{p} x{calib[p]['factor']:.3g} from {calib[p]['runs']} finished runs"
                    for p in ("probe", "finetune") if calib[p]["runs"])
    return (f"[whichmodel] compute budget {format_duration(cp.budget_s)} on {task} "
            f"({n_models} models): {probe}; fine-tunes up to ~{format_duration(costliest)} each: "
            f"B = {cp.budget}, estimated {format_duration(cp.estimated_s)}\n"
            f"[whichmodel] estimates: FLOPs / {calib['device_tflops']:g} TFLOP/s, "
            + (f"calibrated on the experiment ({how})" if how else
               "not calibrated (no finished run in the experiment yet)"))


def spent_seconds(decision: dict[str, Any], probe_runs: Mapping[str, Any],
                  finished: set[str], task: str, probe_seconds, learned: bool = False
                  ) -> float | None:
    """The compute this call spent: the probes and fine-tunes it ran (not those MLflow had),
    as their runs logged them, and a ``learned`` strategy's ranking (its embeddings and fit);
    None where one logged none."""
    from sweeps.plan import pair_key

    total = 0.0
    for model, run in probe_runs.items():
        if pair_key(model, task, "probe") not in finished:
            seconds = probe_seconds(run.data.metrics)
            if seconds is None:
                return None
            total += seconds
    for model, result in (decision.get("finetuned") or {}).items():
        if pair_key(model, task, "finetune") not in finished:
            if result.get("seconds") is None:
                return None
            total += result["seconds"]
    return total + (decision["cost"].get("rank_s") or 0.0 if learned else 0.0)
