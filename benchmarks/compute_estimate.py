"""How far the cost estimate (sweeps/cost.py) is from the compute a finished sweep logged.

    make quickstart && python -m benchmarks.compute_estimate [--config CONFIG] [--write-rate]

Measures this machine's rate once (:func:`sweeps.device_rate.measure_rate`: training steps of
each of the sweep's architectures at its fine-tune batch, one CPU thread or the GPU, and
Lightning's overhead per optimizer step and per fit), estimates the sweep's finished keys at that
rate, and compares with the seconds their MLflow runs logged (``time/features``,
``time/proxy/<p>``, ``time/finetune``). ``--write-rate``: also record the rate for
``resources.device_tflops: measured`` (``$WHICHMODEL_HOME/device_rate.json``).

``--direct N``: instead of a finished sweep's runs, run the trials of N (model, task) pairs of the
sweep here, one after another in this process (the trial bodies, no Ray, no MLflow), with the
rate measured before each pair and after the last: on a machine other jobs share, the estimate
then meets the compute it predicts under the same load.

The last line of stdout is one JSON object: ``ratio`` (estimate / measured, target 0.7-1.3),
``ratio_by_part`` (probe, early_stop, finetune), the seconds of each, and the measured rate
(``rate_gflops``, ``step_ms``, ``fit_ms``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.harness import finite, log

QUICKSTART = Path(__file__).resolve().parents[1] / "sweeps" / "configs" / "quickstart.yaml"


def main(argv: list[str] | None = None) -> int:
    from sweeps.cost import architectures, estimate_vs_measured
    from sweeps.device_rate import device_name, measure_rate, write_rate
    from sweeps.paths import default_paths
    from sweeps.plan import plan_sweep
    from whichmodel.quiet import quiet_libraries

    parser = argparse.ArgumentParser(prog="python -m benchmarks.compute_estimate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=QUICKSTART)
    parser.add_argument("--tracking-uri")
    parser.add_argument("--write-rate", action="store_true",
                        help="record the measured rate for resources.device_tflops: measured")
    parser.add_argument("--direct", type=int, metavar="N",
                        help="run N pairs' trials here, the rate measured before and after")
    args = parser.parse_args(argv)
    quiet_libraries()
    plan = plan_sweep(args.config)
    paths = default_paths()
    if args.direct:
        out = direct(plan, paths, args.direct)
        print(json.dumps(finite({**out, "config": str(args.config),
                                 "target": "0.7 <= ratio <= 1.3"})), flush=True)
        return 0
    rate = measure_rate(architectures(plan), plan.cfg.finetune.batch_size)
    log(f"rate {rate.tflops * 1e3:.2f} GFLOP/s, {rate.step_s * 1e3:.2f} ms per step, "
        f"{rate.fit_s * 1e3:.0f} ms per fit ({rate.source})")
    if args.write_rate:
        log(f"wrote {write_rate(paths.home, rate, device_name())}")
    out = estimate_vs_measured(plan, rate, paths.tracking_uri(args.tracking_uri))
    out.update(rate_gflops=rate.tflops * 1e3, step_ms=rate.step_s * 1e3, fit_ms=rate.fit_s * 1e3,
               device=device_name(), config=str(args.config), target="0.7 <= ratio <= 1.3")
    print(json.dumps(finite(out)), flush=True)
    return 0


def direct(plan, paths, pairs: int) -> dict:
    """Run ``pairs`` (model, task) pairs' trials here (every other model, every third task), the rate
    measured before each pair and after the last; their estimate at the mean rate against the
    compute they logged."""
    import torch

    from sweeps.cost import architectures, job_work, model_shape, task_shape
    from sweeps.device_rate import Rate, device_name, measure_rate
    from sweeps.driver import trial_settings
    from sweeps.plan import expand_jobs
    from sweeps.progress import compute_seconds
    from sweeps.trials import run_trial

    cfg, settings = plan.cfg, trial_settings(plan, paths)
    models = plan.models[::2] + plan.models[1::2]  # the zoo lists its architectures in blocks
    chosen = [(models[i % len(models)], plan.tasks[(i * 3) % len(plan.tasks)])
              for i in range(pairs)]
    archs = architectures(plan)
    rates = []
    work, logged = {}, {}
    threads = torch.get_num_threads()
    try:
        for m, t in chosen:
            rates.append(measure_rate(archs, cfg.finetune.batch_size))  # the load of the moment
            torch.set_num_threads(1)  # as a trial has
            for job in expand_jobs(cfg, [(m, t, "probe"), (m, t, "finetune")]):
                shape, task = model_shape(m, plan), task_shape(t, plan.task_refs[t])
                work[job.describe()] = job_work(cfg, job, shape, task)
                logged[job.describe()] = compute_seconds(run_trial(job, settings))
                log(f"{job.describe()[:60]}: {logged[job.describe()]:.2f} s")
    finally:
        torch.set_num_threads(threads)
    rates.append(measure_rate(archs, cfg.finetune.batch_size))
    n = len(rates)
    rate = Rate(sum(r.tflops for r in rates) / n, rates[0].source,
                sum(r.step_s for r in rates) / n, sum(r.fit_s for r in rates) / n)
    estimated = sum(w.seconds(rate) for w in work.values())
    measured = sum(logged.values())
    return {"pairs": pairs, "trials": len(work), "estimated_s": estimated,
            "measured_s": measured, "ratio": estimated / measured,
            "rate_gflops": rate.tflops * 1e3,
            "rate_gflops_range": [min(r.tflops for r in rates) * 1e3,
                                  max(r.tflops for r in rates) * 1e3],
            "step_ms": rate.step_s * 1e3, "fit_ms": rate.fit_s * 1e3, "device": device_name()}


if __name__ == "__main__":
    sys.exit(main())
