"""``whichmodel proxy score``: a proxy written outside the package, scored from every pair's saved
probe features and logged beside the sweep's own proxies.

    whichmodel proxy score myproxy.py:score --experiment quickstart
    whichmodel proxy score mypackage.metrics:ncti --experiment vtab1k --name ncti --workers 8

``score(inputs) -> float`` takes the registry's :class:`~selection.proxies.registry.ProxyInputs`
(``inputs.train_x``, ``train_y``, ``val_x``, ``val_y``, ``n_classes``, ``source_probs_train``;
higher is better), exactly what a registered proxy gets in a probe trial: the probe's train800
and val200 features (torch float32), labels and the source classifier's softmax, read from the
features cache the probe trial saved (``probe.save_features``: ``$WHICHMODEL_HOME/features/
<sweep>/<model>/<task>.npz``, else the probe run's ``features/<task>.npz`` artifact, else its
``features_uri`` copy on S3). A pair without a cache is named and nothing runs; ``--recompute``
runs the forward pass of those pairs only (with the sweep file: ``--config``, else the one the
experiment's last run used) and logs their cache to their probe run.

Each value goes to the pair's probe run (keyed ``pair_key`` and the probe protocol's hash) as
``proxy/<name>`` with ``time/proxy/<name>`` and the tag ``proxy_fn/<name>`` (``MODULE:FUNCTION``),
in one MLflow call: a pair has all of it or none. A pair whose run already has ``proxy/<name>``
is not scored again, so a second call logs nothing new. A function that raises, returns NaN or
takes longer than ``--timeout`` on a pair is named with the pair, nothing is logged for it, and
the command exits 1 after logging the others (:mod:`sweeps.scoring_pool` runs the function:
one worker process here, or ``--workers N`` Ray actors, locally or on the cluster). Then the
experiment's report prints with ``proxy/<name>`` beside every other strategy.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sweeps.scoring_pool import Outcome, Pair, load_function, score_pairs
from whichmodel.errors import WhichModelError

DEFAULT_TIMEOUT_S = 600.0
_SHOWN = 10  # pairs named in one line


def probe_runs(tracker, probe_hash: str | None) -> list[Any]:
    """The experiment's finished probe runs, one per pair: those of ``probe_hash`` when the sweep
    file is known; without it, a pair with runs of several probe settings is an error."""
    runs: dict[str, list[Any]] = {}
    for run in tracker.search("tags.protocol = 'probe'"):
        tags = run.data.tags
        if run.info.status != "FINISHED" or not tags.get("pair_key"):
            continue
        if probe_hash is not None and tags.get("protocol_hash") != probe_hash:
            continue
        runs.setdefault(tags["pair_key"], []).append(run)
    mixed = sorted(k for k, rs in runs.items() if len({r.data.tags.get("protocol_hash")
                                                       for r in rs}) > 1)
    if mixed:
        raise WhichModelError(f"experiment {tracker.experiment!r}: {mixed[0]} has probe runs of "
                              f"{len({r.data.tags.get('protocol_hash') for r in runs[mixed[0]]})} "
                              "different probe settings; give --config SWEEP.yaml to pick the "
                              "sweep's")
    return [rs[0] for _, rs in sorted(runs.items())]


def cached_features(tracker, run, home: Path, tmp: Path) -> Path | None:
    """The pair's features cache: on this machine, else the run's artifact, else on S3."""
    from sweeps import storage

    tags = run.data.tags
    model, task = tags["model"], tags["task"]
    local = home / "features" / tags.get("sweep", tracker.experiment) / model / f"{task}.npz"
    if local.is_file():
        return local
    name = f"features/{task}.npz"
    if name in {a.path for a in tracker.client.list_artifacts(run.info.run_id, "features")}:
        return Path(tracker.client.download_artifacts(run.info.run_id, name,
                                                      str(tmp / f"{model}@{task}")))
    uri = tags.get("features_uri")
    if uri:
        try:
            return storage.download_file(uri, tmp / f"{model}@{task}.npz")
        except FileNotFoundError:
            return None
    return None


def recompute_features(plan, paths, tracker, run) -> Path:
    """The pair's forward pass again (one torch thread, as a trial), saved to the sweep's
    features cache and logged as its probe run's artifact."""
    import torch

    from sweeps.driver import trial_settings
    from sweeps.plan import Job
    from sweeps.trials import probe_features, save_features

    model, task = run.data.tags["model"], run.data.tags["task"]
    if model not in plan.models or task not in plan.tasks:
        raise WhichModelError(f"{model}@{task}: not in the sweep file {plan.path}; give the "
                              "experiment's sweep file with --config")
    settings = trial_settings(plan, paths)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        feats, probs, data, _, _ = probe_features(Job("probe", model, task), settings)
    finally:
        torch.set_num_threads(threads)
    path = save_features(Path(settings.features_dir) / model / f"{data.name}.npz", feats, probs,
                         data.splits)
    tracker.client.log_artifact(run.info.run_id, str(path), artifact_path="features")
    return path


def load_inputs(path: Path):
    """The pair's ProxyInputs from its cache, checked as a probe trial's are."""
    from selection.proxies import make_inputs
    from sweeps.trials import load_features

    try:
        f = load_features(path)
        return make_inputs(f["train_x"], f["train_y"], f["val_x"], f["val_y"],
                           source_probs_train=f["source_probs_train"])
    except (OSError, KeyError, ValueError) as exc:
        raise WhichModelError(f"{path}: {type(exc).__name__}: {exc}") from None


def log_value(tracker, run, name: str, spec: str, outcome: Outcome) -> str | None:
    """One MLflow call: the value, its seconds and which function made it; None, or why not."""
    from mlflow.entities import Metric, RunTag

    from sweeps.tracking.client import RETRY_DELAYS_S, with_retries

    now = int(time.time() * 1000)
    metrics = [Metric(f"proxy/{name}", outcome.value, now, 0),
               Metric(f"time/proxy/{name}", float(outcome.seconds or 0.0), now, 0)]
    _, error = with_retries(lambda: tracker.client.log_batch(
        run.info.run_id, metrics=metrics, tags=[RunTag(f"proxy_fn/{name}", spec)]),
        RETRY_DELAYS_S)
    return None if error is None else f"could not be logged ({type(error).__name__}: {error})"


def check_name(name: str) -> str:
    from selection.proxies import list_proxies
    from sweeps.config import NAME_PATTERN

    if not re.fullmatch(NAME_PATTERN, name or ""):
        raise WhichModelError(f"--name {name!r}: a proxy name is letters, digits, '_', '.' and "
                              "'-', starting with a letter or digit")
    if name in list_proxies():
        raise WhichModelError(f"--name {name}: proxy/{name} is a registered proxy's metric; "
                              "give the function's score another --name")
    return name


def _named(labels: list[str]) -> str:
    more = f"; and {len(labels) - _SHOWN} more" if len(labels) > _SHOWN else ""
    return "; ".join(labels[:_SHOWN]) + more


def score_experiment(args, paths, stream=None) -> tuple[int, Any]:
    """Score, log and say so; (exit code, the sweep's plan or None) for the report that follows."""
    from sweeps.driver import remembered_config
    from sweeps.plan import plan_sweep
    from sweeps.tracking.client import Tracker

    stream = stream or sys.stderr
    if args.timeout <= 0 or args.workers < 1:
        raise WhichModelError("--timeout must be > 0 seconds and --workers >= 1")
    fn, fn_name = load_function(args.function)
    name = check_name(args.name or fn_name)
    tracker = Tracker(paths.tracking_uri(args.tracking_uri), args.experiment, create=False)
    config = args.config or remembered_config(paths, args.experiment)
    plan = plan_sweep(config) if config else None
    runs = probe_runs(tracker, plan.cfg.protocol_hash("probe") if plan else None)
    if not runs:
        raise WhichModelError(f"experiment {args.experiment!r} has no finished probe runs; run a "
                              "sweep with the probe protocol first (whichmodel run CONFIG)")
    todo = [r for r in runs if f"proxy/{name}" not in r.data.metrics]
    print(f"[whichmodel] proxy/{name} ({args.function}): {len(runs)} probe runs in "
          f"{args.experiment!r}, {len(runs) - len(todo)} already scored, {len(todo)} to score",
          file=stream, flush=True)
    if not todo:
        return 0, plan
    with tempfile.TemporaryDirectory(prefix="wm-proxy-") as tmp:
        caches = {r.info.run_id: cached_features(tracker, r, paths.home, Path(tmp)) for r in todo}
        missing = [r for r in todo if caches[r.info.run_id] is None]
        if missing and not args.recompute:
            raise WhichModelError(
                f"no saved features for {len(missing)} pair(s): "
                f"{_named([_label(r) for r in missing])} (the sweep ran without "
                "probe.save_features, or they were deleted); --recompute runs only their forward "
                "passes again")
        if missing and plan is None:
            raise WhichModelError("--recompute needs the experiment's sweep file: --config "
                                  "SWEEP.yaml")
        for r in missing:
            caches[r.info.run_id] = recompute_features(plan, paths, tracker, r)
        if missing:
            print(f"[whichmodel] recomputed the features of {len(missing)} pair(s): "
                  f"{_named([_label(r) for r in missing])}", file=stream, flush=True)
        by_label = {_label(r): r for r in todo}
        failures: list[str] = []

        def on_outcome(outcome: Outcome) -> None:
            run = by_label[outcome.pair.label]
            error = outcome.error or log_value(tracker, run, name, args.function, outcome)
            if error:
                failures.append(f"{outcome.pair.label}: {error}")

        pairs = [Pair(r.data.tags["model"], r.data.tags["task"],
                      lambda p=caches[r.info.run_id]: load_inputs(p)) for r in todo]
        score_pairs(args.function, fn, pairs, timeout=args.timeout, workers=args.workers,
                    on_outcome=on_outcome)
    print(f"[whichmodel] proxy/{name}: {len(todo) - len(failures)} pair(s) scored and logged",
          file=stream, flush=True)
    if failures:
        print(f"whichmodel: error: proxy/{name}: {len(failures)} pair(s) got no score, nothing "
              f"logged for them: {_named(sorted(failures))}", file=stream, flush=True)
    return (1 if failures else 0), plan


def _label(run) -> str:
    return f"{run.data.tags['model']}@{run.data.tags['task']}"


def add_parser(sub, report) -> None:
    """``whichmodel proxy score``; ``report(args, paths, plan) -> exit code`` prints the
    experiment's report afterwards (the CLI's own report command)."""
    from sweeps.paths import default_paths

    proxy = sub.add_parser("proxy", help="score a proxy written outside the package").add_subparsers(
        dest="proxy_cmd", required=True)
    p = proxy.add_parser("score", help="run MODULE:FUNCTION on every pair's saved probe features, "
                                       "log proxy/<name> to the probe runs, print the report")
    p.add_argument("function", help="MODULE:FUNCTION or path/to/file.py:FUNCTION, "
                                    "score(inputs: ProxyInputs) -> float, higher is better")
    p.add_argument("--experiment", required=True, help="the sweep's MLflow experiment")
    p.add_argument("--name", help="logged as proxy/<name> (default: the function's name)")
    p.add_argument("--recompute", action="store_true",
                   help="run the forward pass again for pairs without saved features")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds per pair (default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--workers", type=int, default=1,
                   help="pairs in parallel: 1 runs one local worker process, N > 1 Ray actors "
                        "(RAY_ADDRESS: on that cluster)")
    p.add_argument("--config", type=Path, help="the sweep file (default: the experiment's last)")
    p.add_argument("--tracking-uri")
    p.add_argument("--reports-dir", default="reports")
    p.add_argument("--no-report", action="store_true")

    def run(args) -> int:
        paths = default_paths(args.home)
        code, plan = score_experiment(args, paths)
        if args.no_report:
            return code
        return max(code, report(args, paths, plan))

    p.set_defaults(func=run)
