"""``whichmodel recommend``'s command line (the work: :mod:`sweeps.recommend.decide`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from whichmodel.errors import WhichModelError
from whichmodel.files import atomic_write


def add_parser(sub) -> None:
    rc = sub.add_parser("recommend", help="which model to fine-tune for a task, at a budget of B "
                        "fine-tunes: probes the pool, ranks it, fine-tunes the top B")
    rc.add_argument("--task", required=True, help="offline task, vtab:<name>, or an ImageFolder "
                    "path (train/<class>/..., test/<class>/..., optional val/)")
    budget = rc.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=int, help="fine-tunes you can afford (B >= 1)")
    budget.add_argument("--compute-budget", metavar="DURATION", help="compute you can afford "
                        "(2h, 90m, 3600s): the largest B whose estimated probes and fine-tunes "
                        "fit, the plan printed before running")
    rc.add_argument("--config", help="sweep file for the protocols, pools and experiment "
                    "(default: the quickstart's)")
    rc.add_argument("--catalog", help="a catalog of models and pools (the config's protocols)")
    rc.add_argument("--pool", default="all", help="a named pool of the config or catalog")
    how = rc.add_mutually_exclusive_group()
    how.add_argument("--strategy", help="a strategy that needs no fine-tune result of this task "
                     "(default hybrid:proxy/linear)")
    how.add_argument("--from-report", metavar="EXPERIMENT", help="the strategy with the lowest "
                     "mean regret at B in this experiment's latest report")
    rc.add_argument("--no-finetune", action="store_true", help="stop after the ranking")
    rc.add_argument("--group", default="natural", choices=("natural", "specialized", "structured"),
                    help="an ImageFolder task's group")
    rc.add_argument("--format", choices=("text", "json"), default="text")
    rc.add_argument("--output", help="write the answer here (or - for standard output)")
    rc.add_argument("--tracking-uri")
    rc.set_defaults(func=cmd_recommend)


def cmd_recommend(args) -> int:
    from sweeps.recommend import RecommendFailed, recommend
    from sweeps.recommend.text import format_decision

    try:
        decision = recommend(args.task, args.budget, compute_budget=args.compute_budget,
                             config=args.config, catalog=args.catalog,
                             pool=args.pool, strategy=args.strategy, from_report=args.from_report,
                             finetune=not args.no_finetune, tracking_uri=args.tracking_uri,
                             home=args.home, group=args.group)
    except RecommendFailed as exc:
        print(f"whichmodel: error: {exc}", file=sys.stderr)
        return 1
    text = (json.dumps(decision, indent=2, sort_keys=True) if args.format == "json"
            else format_decision(decision))
    if args.output and args.output != "-":
        try:
            atomic_write(Path(args.output), text + "\n")
        except OSError as exc:
            raise WhichModelError(f"--output {args.output}: {exc.strerror or exc}") from None
        print(format_decision(decision))
    else:
        print(text)
    return 0
