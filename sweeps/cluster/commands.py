"""The cluster commands of the CLI: ``whichmodel submit``, ``jobs``, ``logs`` and ``stop`` over
Ray's Jobs API (:mod:`sweeps.cluster.jobs`); :mod:`sweeps.cli` parses their arguments."""

from __future__ import annotations

import sys

from sweeps.paths import default_paths


def cmd_submit(args) -> int:
    from sweeps.cluster.jobs import Cluster, describe_submission, plan_submission

    sub = plan_submission(args.config, working_dir=args.working_dir, extra_env=args.env or (),
                          no_report=args.no_report, force=args.force)
    from sweeps.cost_text import print_submit_cost

    print_submit_cost(args, default_paths(args.home))  # the cost before it is spent
    cluster = Cluster(args.address)
    job_id = cluster.submit(sub)
    print(describe_submission(sub, job_id, cluster.address), flush=True)
    if args.no_wait:
        return 0
    try:
        status = cluster.print_logs(job_id, follow=True)
    except KeyboardInterrupt:
        print(f"whichmodel: stopped following; job {job_id} goes on (whichmodel stop {job_id} "
              f"--address {cluster.address} stops it)", file=sys.stderr)
        return 130
    print(f"[whichmodel] job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args) -> int:
    from sweeps.cluster.jobs import Cluster, format_jobs

    print(format_jobs(Cluster(args.address).jobs()))
    return 0


def cmd_logs(args) -> int:
    from sweeps.cluster.jobs import Cluster

    status = Cluster(args.address).print_logs(args.job, follow=args.follow)
    if args.follow:
        print(f"[whichmodel] job {args.job}: {status}")
    return 0


def cmd_stop(args) -> int:
    from sweeps.cluster.jobs import Cluster

    was_running, status = Cluster(args.address).stop(args.job, timeout_s=args.timeout)
    print(f"[whichmodel] job {args.job}: {status}"
          + ("" if was_running else " (it was not running; nothing to stop)"))
    return 0 if status in ("STOPPED", "SUCCEEDED", "FAILED") else 1
