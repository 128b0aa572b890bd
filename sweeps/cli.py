"""The ``whichmodel`` command line.

    whichmodel zoo build sweeps/configs/zoo.yaml     pre-train the offline model zoo (Ray Tune)
    whichmodel tasks build [--image-size 32]         render the offline task suite
    whichmodel validate sweeps/configs/quickstart.yaml
    whichmodel run sweeps/configs/quickstart.yaml    probes + fine-tunes, then the regret report
    whichmodel resume quickstart                     continue an interrupted sweep (Tune restore)
    whichmodel report --experiment quickstart        regret report from MLflow (or --records CSV)
    whichmodel list models|tasks|proxies|strategies|architectures [--config FILE]
    whichmodel recommend --task TASK --budget B [--config FILE]   which model to fine-tune
    whichmodel proxy score FILE.py:FUNCTION --experiment NAME     a new proxy, from saved features
    whichmodel benchmark-proxies [--records public:all]           proxies vs static rankings
    whichmodel submit CONFIG --address http://HEAD:8265   the sweep as a Ray Job on a cluster
    whichmodel jobs|logs JOB [--follow]|stop JOB --address http://HEAD:8265

Bad input (a malformed or misspelled sweep file, a value out of bounds, a name that would leave
its folder, an unknown model, task or strategy, unreadable or non-finite weights, a malformed
records table, accuracies out of range) and a second driver of a running sweep end with a
one-line ``whichmodel: error: ...`` naming the file and key (or the holder of the sweep's lease),
exit code 2 (``EXIT_BAD_INPUT``), and nothing written. The README's CLI section lists them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sweeps.cluster.commands import cmd_jobs, cmd_logs, cmd_stop, cmd_submit
from sweeps.cluster.node_secrets import load_secrets
from whichmodel.errors import WhichModelError
from whichmodel.names import check_name, within
from whichmodel.quiet import quiet_libraries

EXIT_BAD_INPUT = 2
FORCE_HELP = ("take the sweep's lease even if another driver holds it (only when you know that "
              "driver is gone: two drivers train every pair twice), and recompute the report "
              "rather than reuse the last one")
REPORT_FORCE_HELP = ("recompute the report even when the experiment's finished runs, the report "
                     "settings and the code are those of the last report (which is otherwise "
                     "reused)")


def _paths(args):
    from sweeps.paths import default_paths

    return default_paths(args.home)


def cmd_zoo_build(args) -> int:
    from sweeps.zoo import build_zoo, check_families
    from sweeps.zoo_config import load_zoo_config

    zoo = load_zoo_config(args.config)
    check_families(zoo, str(args.config))
    build_zoo(zoo, _paths(args), only=args.only or None, force=args.force)
    return 0


def cmd_tasks_build(args) -> int:
    from lightning_modules.offline import build_suite
    from lightning_modules.tasks import list_tasks

    offline = list_tasks(kind="offline")
    names = args.tasks or offline
    for name in names:
        if name not in offline:
            raise WhichModelError(f"unknown task {name!r}; known: {', '.join(offline)}")
    for path in build_suite(_paths(args).data_root, names, image_size=args.image_size,
                            seed=args.seed):
        print(path)
    return 0


def cmd_validate(args) -> int:
    from sweeps.plan import check_plan, plan_sweep
    from sweeps.tracking.client import preflight

    plan = plan_sweep(args.config, structure=args.json)
    paths = _paths(args)
    if not args.file_only:
        check_plan(plan, paths)  # every model opens, every task's data is there: as run checks
        preflight(paths.tracking_uri(args.tracking_uri))  # a tracking server answers (no write)
    cfg = plan.cfg
    from sweeps.cost_text import cost_doc, cost_lines, validate_cost
    from sweeps.memory_plan import format_table, gpu_sweep, memory_table, refuse_unfit

    memory = memory_table(plan) if gpu_sweep(cfg) else None  # each model's micro-batch on a GPU
    if memory is not None:
        refuse_unfit(plan, memory)
    cost = validate_cost(plan, paths, args)  # --file-only: MLflow is not asked what finished
    if args.json:
        from sweeps.plan import plan_json

        doc = {**plan_json(plan), "cost": cost_doc(plan, cost, args.price_per_gpu_hour, args.gpus),
               **({"memory": memory} if memory else {})}
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return 0
    from sweeps.plan import count_trials

    n_pairs = len(plan.models) * len(plan.tasks)
    trials = count_trials(cfg, plan.keys())
    print(f"{args.config}: ok: sweep {cfg.name!r}, {len(plan.models)} models x {len(plan.tasks)} "
          f"tasks = {n_pairs} pairs, {trials} trials; pools: "
          + ", ".join(f"{p} ({len(m)})" for p, m in plan.pools.items()))
    if memory is not None:
        precision = next(iter(memory.values()), {}).get("precision", "")
        print(f"estimated peak of a fine-tune step ({precision}) and the micro-batch on a GPU of "
              f"{cfg.resources.gpu_memory_gib:g} GiB (gradients accumulate up to the batch):")
        print("\n".join(format_table(memory)))
    print("\n".join(cost_lines(plan, cost, args.price_per_gpu_hour, args.gpus)))
    return 0


def cmd_run(args) -> int:
    from sweeps.driver import run_sweep
    from sweeps.plan import plan_sweep

    plan = plan_sweep(args.config)
    paths = _paths(args)
    outcome = run_sweep(plan, paths, tracking_uri=args.tracking_uri, force=args.force)
    return _after_sweep(args, paths, plan, outcome)


def cmd_resume(args) -> int:
    from sweeps.driver import resume_sweep

    paths = _paths(args)
    plan, outcome = resume_sweep(args.name, paths, force=args.force)
    return _after_sweep(args, paths, plan, outcome)


#: Seconds of the last sweep command's stages in this process (``python -m sweeps.quickstart``).
STAGES: dict[str, float] = {}


def _after_sweep(args, paths, plan, outcome) -> int:
    uri = outcome.tracking_uri or None
    STAGES.clear()
    STAGES.update(outcome.stage_s)
    if outcome.failures:
        shown = "; ".join(outcome.failures[:10])
        more = f"; and {len(outcome.failures) - 10} more" if len(outcome.failures) > 10 else ""
        print(f"whichmodel: error: {len(outcome.failures)} failure(s): {shown}{more} (re-run to "
              "retry them; finished pairs are kept)", file=sys.stderr)
        return 1
    if plan.cfg.search.enabled:
        from sweeps.search import run_search

        start = time.perf_counter()
        run_search(plan, paths, paths.tracking_uri(uri), tracker=outcome.tracker)
        STAGES["search"] = time.perf_counter() - start
    if not args.no_report:
        start = time.perf_counter()
        _report(paths, uri, plan.cfg.experiment, plan=plan,
                out_dir=within(args.reports_dir, plan.cfg.name), force=args.force,
                tracker=outcome.tracker)
        STAGES["report"] = time.perf_counter() - start
    uri = paths.tracking_uri(uri)
    _print_ui(uri, outcome.experiment_id or None)
    return 0


def _print_ui(uri: str, experiment_id: str | None) -> None:
    """Where to see the runs: the MLflow UI's address of the experiment's runs table, in the
    model-training view (``workflowType=machine_learning``: not the GenAI traces page)."""
    from sweeps.tracking.ui import ui_url

    if uri.startswith("sqlite:"):
        print(f"\n[whichmodel] browse the runs: mlflow ui --backend-store-uri {uri}\n"
              f"[whichmodel] then open {ui_url('http://127.0.0.1:5000', experiment_id)}")
    elif uri.startswith(("http://", "https://")):
        print(f"\n[whichmodel] browse the runs: {ui_url(uri, experiment_id)}")


def _report(paths, tracking_uri, experiment, *, plan=None, out_dir: Path, pool: str = "all",
            budget: int | None = None, fmt: str | None = None, output: str | None = None,
            detail: bool = False, force: bool = False, tracker=None) -> int:
    """The report: the last one when nothing it depends on changed (:mod:`sweeps.cache`),
    else computed; ``tracker``: the command's own (its read of the pair runs is reused)."""
    from sweeps.cache import cached_report
    from sweeps.reporting import report_experiment
    from sweeps.tracking.client import Tracker

    tracker = tracker or Tracker(paths.tracking_uri(tracking_uri), experiment, create=False)
    kwargs: dict = {"pool": pool}
    if plan is not None:
        cfg = plan.cfg
        from sweeps.learned import learned_predictions

        kwargs.update(max_budget=budget or cfg.report.max_budget, strategies=cfg.report.strategies,
                      deltas=cfg.report.deltas,
                      protocol_hashes={p: cfg.protocol_hash(p) for p in ("probe", "finetune")},
                      pool_models=plan.pools.get(pool), pools=plan.pools,
                      tie_tolerance=cfg.report.task_agnostic.tie_tolerance,
                      learned=lambda records, metadata: learned_predictions(
                          records, plan, paths, metadata=metadata))
        if pool not in plan.pools:
            raise WhichModelError(f"{plan.path}: key 'pools': no pool {pool!r}; known: "
                                  f"{', '.join(plan.pools)}")
    elif budget:
        kwargs["max_budget"] = budget
    report, fingerprint = cached_report(
        tracker, paths.home, kwargs, plan.cfg.report if plan is not None else None, force,
        lambda: report_experiment(tracker, artifacts_cache=paths.home / "cache" / "artifacts",
                                  **kwargs))
    if plan is not None and plan.cfg.search.enabled:
        from sweeps.search import add_search_summary, search_results

        results = search_results(tracker, plan.cfg)
        if results:
            add_search_summary(report, results, plan.cfg)  # and its compute
    return _emit(report, out_dir, tracker, fmt, output, detail, fingerprint=fingerprint)


def _emit(report, out_dir: Path, tracker, fmt: str | None, output: str | None,
          detail: bool = False, fingerprint: str | None = None) -> int:
    from sweeps.reporting import results_table, write_and_log

    if fmt and output == "-":
        from selection.report.files import write_report
        from selection.report.sections import format_markdown

        write_report(report, out_dir)
        text = {"json": lambda: json.dumps(report, indent=2, sort_keys=True),
                "md": lambda: format_markdown(report),
                "csv": lambda: (out_dir / "regret.csv").read_text()}[fmt]()
        print(text)
        return 0
    from selection.report.tables import terminal_width

    for warning in report.get("warnings", []):  # repeated at the top of the report's files
        print(f"whichmodel: warning: {warning}", file=sys.stderr)
    width = terminal_width(None if detail else 100)
    print("Fine-tune test accuracy (best per task marked *):\n" + results_table(report, width)
          + "\n")
    if report.get("budgeted_search"):
        from sweeps.search import format_search

        print(format_search(report["budgeted_search"]) + "\n")
    files = write_and_log(report, out_dir, tracker, detail=detail, fingerprint=fingerprint)
    if fmt and output:
        Path(output).write_bytes(files[fmt].read_bytes())
    return 0


def cmd_report(args) -> int:
    paths = _paths(args)
    if args.budget is not None and args.budget < 1:
        raise WhichModelError(f"--budget {args.budget}: the largest budget B to report, an "
                              "integer of 1 or more (B fine-tunes)")
    if args.records:
        from selection.records import read_models_csv, read_records_csv
        from sweeps.public import records_source
        from sweeps.reporting import report_from_tables

        records_path, models_path, label = records_source(args.records, args.models)
        out_dir = within(args.reports_dir, check_name(label, "--records (the table's name, the "
                                                              "report folder's)"))
        records = read_records_csv(records_path)  # RecordsError: one line, exit 2
        meta = read_models_csv(models_path) if models_path else None
        report = report_from_tables(records, meta, None, pool=args.pool,
                                    max_budget=3 if args.budget is None else args.budget)
        return _emit(report, out_dir, None, args.format, args.output, args.detail)
    if not args.experiment:
        raise WhichModelError("report: give --experiment NAME (MLflow) or --records FILE.csv")
    out_dir = within(args.reports_dir, check_name(args.experiment, "--experiment"))
    from sweeps.driver import remembered_config
    from sweeps.plan import plan_sweep

    # The sweep file gives pools, budgets, strategies and what ChoiceNet needs; by default the
    # one the experiment's last run used.
    config = args.config or remembered_config(paths, args.experiment)
    plan = plan_sweep(config) if config else None
    return _report(paths, args.tracking_uri, args.experiment, plan=plan, out_dir=out_dir,
                   pool=args.pool, budget=args.budget, fmt=args.format, output=args.output,
                   detail=args.detail, force=args.force)


def cmd_list(args) -> int:
    """Every entry of a registry (tasks, proxies, strategies, architectures), or a zoo's models."""
    rows: list[tuple[str, ...]] = []
    if args.what == "tasks":
        from lightning_modules.tasks import get_task, list_tasks

        for name in list_tasks():  # VTAB-1k: torchvision's loader or imagefolder, and the layout
            task = get_task(name)
            rows.append((name, task.info.group, f"{task.info.num_classes:>3} classes",
                         task.summary))
    elif args.what == "proxies":
        from selection.proxies import get_proxy, list_proxies

        for name in list_proxies():
            proxy = get_proxy(name)
            rows.append((name, "needs " + "+".join(proxy.needs), proxy.description))
    elif args.what == "strategies":
        from selection.strategies import STRATEGIES

        for name, spec in STRATEGIES.items():
            kind = "bound: uses the task's results" if spec.uses_task_results else "strategy"
            rows.append((name, kind, (spec.factory.__doc__ or "").strip().split("\n")[0]))
    elif args.what == "architectures":
        from lightning_modules.backbones import ARCHITECTURES

        for name, build in ARCHITECTURES.items():
            rows.append((name, (build.__doc__ or "").strip().split("\n")[0]))
    else:
        from sweeps.zoo_config import load_zoo_config

        zoo = load_zoo_config(args.config)
        for m in zoo.models:
            rows.append((m.name, m.arch, m.objective, ",".join(m.upstream) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)] if rows else []
    for row in rows:
        print("  ".join([c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sweeps.cost_text import add_cost_options

    default_configs = Path(__file__).parent / "configs"
    p = argparse.ArgumentParser(prog="whichmodel", description=__doc__.split("\n")[0])
    p.add_argument("--home", help="working folder (default $WHICHMODEL_HOME or ~/.cache/whichmodel)")
    sub = p.add_subparsers(dest="command", required=True)

    zoo = sub.add_parser("zoo", help="the offline model zoo").add_subparsers(dest="zoo_cmd",
                                                                             required=True)
    zb = zoo.add_parser("build", help="pre-train the zoo's missing models on Ray Tune")
    zb.add_argument("config", type=Path)
    zb.add_argument("--only", nargs="*", help="build just these models")
    zb.add_argument("--force", action="store_true", help="rebuild models that exist")
    zb.set_defaults(func=cmd_zoo_build)

    tasks = sub.add_parser("tasks", help="the offline task suite").add_subparsers(dest="tasks_cmd",
                                                                                   required=True)
    tb = tasks.add_parser("build", help="render and cache the offline tasks")
    tb.add_argument("tasks", nargs="*")
    tb.add_argument("--image-size", type=int, default=32)
    tb.add_argument("--seed", type=int, default=0)
    tb.set_defaults(func=cmd_tasks_build)

    v = sub.add_parser("validate", help="check a sweep file and everything it names (models, "
                                        "task data, the tracking server) without running or "
                                        "writing anything")
    v.add_argument("config", type=Path)
    v.add_argument("--tracking-uri", help="the MLflow tracking URI run would use")
    v.add_argument("--json", action="store_true",
                   help="print the resolved plan as JSON: models with their metadata (params, "
                        "feature_dim, imagenet_acc, upstream_size), tasks with their group, pools "
                        "with their members")
    v.add_argument("--file-only", action="store_true",
                   help="check the sweep file alone (keys, names, pools), as 'submit' does: for a "
                        "sweep whose weights and data live on a cluster")
    add_cost_options(v)  # the cost a sweep prints before it runs: sweeps/cost_text.py
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run a sweep on Ray Tune, log to MLflow, print the report")
    r.add_argument("config", type=Path)
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or "
                                          "the local SQLite store in the home folder)")
    r.add_argument("--reports-dir", default="reports")
    r.add_argument("--no-report", action="store_true")
    r.add_argument("--force", action="store_true", help=FORCE_HELP)
    r.set_defaults(func=cmd_run)

    rs = sub.add_parser("resume", help="continue an interrupted sweep (Tune restore); nothing "
                                       "finished runs again")
    rs.add_argument("name", help="the sweep's name")
    rs.add_argument("--reports-dir", default="reports")
    rs.add_argument("--no-report", action="store_true")
    rs.add_argument("--force", action="store_true", help=FORCE_HELP)
    rs.set_defaults(func=cmd_resume)

    rep = sub.add_parser("report", help="regret report of an experiment or a records file")
    rep.add_argument("--experiment")
    rep.add_argument("--config", type=Path, help="the sweep file (pools, budgets, strategies)")
    rep.add_argument("--records", help="long CSV model,task,metric,value, or public:<name> (a "
                                         "table shipped with whichmodel, sweeps/public/)")
    rep.add_argument("--models", type=Path, help="model metadata CSV")
    rep.add_argument("--tracking-uri")
    rep.add_argument("--pool", default="all")
    rep.add_argument("--budget", type=int, help="largest budget B (default 3)")
    rep.add_argument("--format", choices=["md", "csv", "json"])
    rep.add_argument("--output", help="file to write the chosen format to, or - for stdout")
    rep.add_argument("--reports-dir", default="reports")
    rep.add_argument("--detail", action="store_true",
                     help="also print the per-task tables (split to the terminal's width)")
    rep.add_argument("--force", action="store_true", help=REPORT_FORCE_HELP)
    rep.set_defaults(func=cmd_report)

    ls = sub.add_parser("list", help="list a registry: tasks, proxies, strategies, "
                                     "architectures, or a zoo file's models")
    ls.add_argument("what", choices=["models", "tasks", "proxies", "strategies", "architectures"])
    ls.add_argument("--config", type=Path, default=default_configs / "zoo.yaml")
    ls.set_defaults(func=cmd_list)

    # Cluster mode (sweeps/cluster/jobs.py): Ray Jobs on a cluster started with `ray up cluster.yaml`.
    address_help = ("the cluster's dashboard, e.g. http://127.0.0.1:8265 through 'ray dashboard "
                    "cluster.yaml' (default $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS)")
    sb = sub.add_parser("submit", help="run a sweep as a Ray Job on a running Ray cluster")
    sb.add_argument("config", type=Path, help="the sweep file, inside the working dir")
    sb.add_argument("--address", help=address_help)
    sb.add_argument("--env", action="append", metavar="NAME",
                    help="also pass this variable of this environment to the job (repeatable; "
                         "MLflow, AWS, HF, WHICHMODEL_* and TUNE_* variables pass by default)")
    sb.add_argument("--working-dir", type=Path,
                    help="the folder uploaded as the job's working dir (default: this project)")
    sb.add_argument("--no-report", action="store_true", help="run the sweep without the report")
    sb.add_argument("--force", action="store_true", help=FORCE_HELP)
    sb.add_argument("--no-wait", action="store_true",
                    help="print the job id and return instead of following the job's log")
    add_cost_options(sb)
    sb.set_defaults(func=cmd_submit)

    js = sub.add_parser("jobs", help="list the Ray Jobs of a cluster")
    js.add_argument("--address", help=address_help)
    js.set_defaults(func=cmd_jobs)

    lg = sub.add_parser("logs", help="print a Ray Job's log")
    lg.add_argument("job", help="the job's id (as 'whichmodel submit' or 'whichmodel jobs' print)")
    lg.add_argument("--address", help=address_help)
    lg.add_argument("--follow", action="store_true", help="follow the log until the job ends")
    lg.set_defaults(func=cmd_logs)

    st = sub.add_parser("stop", help="stop a Ray Job (its driver and trials)")
    st.add_argument("job", help="the job's id")
    st.add_argument("--address", help=address_help)
    st.add_argument("--timeout", type=float, default=60.0,
                    help="seconds to wait for the job to end (default 60)")
    st.set_defaults(func=cmd_stop)

    from sweeps.recommend.cli import add_parser as add_recommend

    add_recommend(sub)
    from sweeps.proxy_benchmark import add_parser as add_benchmark
    from sweeps.proxy_score import add_parser as add_proxy

    add_benchmark(sub)
    add_proxy(sub, lambda args, paths, plan: _report(  # the report, with the new proxy in it
        paths, args.tracking_uri, args.experiment, plan=plan,
        out_dir=within(args.reports_dir, check_name(args.experiment, "--experiment"))))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        # On a cluster node, the secrets a submitted job does not carry (sweeps/cluster/node_secrets.py).
        load_secrets()
        return args.func(args)
    except WhichModelError as exc:
        print(f"whichmodel: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("whichmodel: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
