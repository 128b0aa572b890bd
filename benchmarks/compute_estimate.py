"""How far the cost estimate (sweeps/cost.py) is from the compute a finished sweep logged.

    make quickstart && python -m benchmarks.compute_estimate [--config CONFIG] [--write-rate]

Measures this machine's rate once (:func:`sweeps.device_rate.measure_rate`: training steps of
each of the sweep's architectures at its fine-tune batch, one CPU thread or the GPU, and
Lightning's overhead per optimizer step and per fit), estimates the sweep's finished keys at that
rate, and compares with the seconds their MLflow runs logged (``time/features``,
``time/proxy/<p>``, ``time/finetune``). ``--write-rate``: also record the rate for
``resources.device_tflops: measured`` (``$WHICHMODEL_HOME/device_rate.json``).

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
    args = parser.parse_args(argv)
    quiet_libraries()
    plan = plan_sweep(args.config)
    paths = default_paths()
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


if __name__ == "__main__":
    sys.exit(main())
