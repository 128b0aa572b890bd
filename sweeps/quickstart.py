"""``make quickstart``: the offline task suite, the zoo, the quickstart sweep and its report, with
one line at the end saying how long each stage took.

    python -m sweeps.quickstart [--started EPOCH_SECONDS]

``--started`` is when ``make`` began (the Makefile passes it), so the line counts the install too:
``[whichmodel] quickstart_s=512 install=58 tasks=4 zoo=101 probes=66 finetunes=221 search=9
report=44 other=9 compute_estimate=0.93``. A second run finds everything built and finished and
takes seconds. ``compute_estimate`` is the cost estimate of the sweep (:mod:`sweeps.cost`, at
this machine's rate measured once, after the sweep) over the compute its runs logged
(``python -m benchmarks.compute_estimate`` prints the parts).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"


def main(argv: list[str] | None = None) -> int:
    from sweeps import cli

    parser = argparse.ArgumentParser(prog="python -m sweeps.quickstart")
    parser.add_argument("--started", type=float, help="when the quickstart began (epoch seconds)")
    args = parser.parse_args(argv)
    began = time.time()
    stages: dict[str, float] = {"install": began - args.started} if args.started else {}
    for name, command in (("tasks", ["tasks", "build"]),
                          ("zoo", ["zoo", "build", str(CONFIGS / "zoo.yaml")]),
                          ("run", ["run", str(CONFIGS / "quickstart.yaml")])):
        start = time.time()
        rc = cli.main(command)
        if rc != 0:
            return rc
        stages[name] = time.time() - start
    run = stages.pop("run")
    stages.update(cli.STAGES)
    stages["other"] = max(0.0, run - sum(cli.STAGES.values()))  # planning, checks, tracking
    total = time.time() - (args.started or began)
    ratio = estimate_ratio(CONFIGS / "quickstart.yaml")
    print("[whichmodel] quickstart_s=" + f"{total:.0f} "
          + " ".join(f"{k}={v:.0f}" for k, v in stages.items())
          + (f" compute_estimate={ratio:.2f}" if ratio is not None else ""), flush=True)
    return 0


def estimate_ratio(config: Path) -> float | None:
    """The sweep's estimated compute at this machine's rate (measured now) over the compute its
    finished runs logged."""
    from sweeps.cost import architectures, estimate_vs_measured
    from sweeps.device_rate import measure_rate
    from sweeps.paths import default_paths
    from sweeps.plan import plan_sweep

    plan = plan_sweep(config)
    rate = measure_rate(architectures(plan), plan.cfg.finetune.batch_size)
    return estimate_vs_measured(plan, rate, default_paths().tracking_uri())["ratio"]


if __name__ == "__main__":
    sys.exit(main())
