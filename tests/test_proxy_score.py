"""`whichmodel proxy score`: a function written outside the package, scored from the tiny sweep's
saved probe features, equals the same function registered as a proxy; bad pairs are named and
get nothing logged; a second call logs nothing new; missing caches are named and --recompute
reruns only their forward passes; --workers runs the pairs on Ray with the same outcome."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from urllib.parse import urlparse

import pytest

from sweeps.cli import main
from sweeps.scoring_pool import evaluate
from tests.tiny import sweep, zoo_home

PROXIES = "proxies: [linear, knn, logme, leep, nce, hscore, hscore_lw, transrate, early_stop]"

# The user's module: written by the test, imported by path as a user would.
USER = '''
import math
import time

import numpy as np


def centroid(inputs):
    """Nearest-class-mean accuracy on the validation split, plus the mean source confidence."""
    x = np.asarray(inputs.train_x, dtype=np.float64)
    v = np.asarray(inputs.val_x, dtype=np.float64)
    means = np.stack([x[inputs.train_y == c].mean(0) for c in range(inputs.n_classes)])
    pred = np.argmin(((v[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    confidence = (0.0 if inputs.source_probs_train is None
                  else float(np.asarray(inputs.source_probs_train).max(1).mean()))
    return float((pred == inputs.val_y).mean()) + 1e-3 * confidence + 1e-6 * float(x.std())


def bad(inputs):
    # digits has 10 classes, sprite_location 8; tiny-random has no source classifier
    has_source = inputs.source_probs_train is not None
    if inputs.n_classes == 10 and not has_source:
        raise ValueError("no score for this pair")
    if inputs.n_classes == 10:
        return math.nan
    if not has_source:
        time.sleep(600)
    return 0.5
'''
PAIRS = [(m, t) for m in ("tiny-random", "tiny-shapes") for t in ("digits", "sprite_location")]
BAD = {("tiny-random", "digits"): "raised ValueError: no score for this pair",
       ("tiny-shapes", "digits"): "returned nan",
       ("tiny-random", "sprite_location"): "took longer than 20 s"}


@pytest.fixture(scope="module")
def env(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("pscore")
    text = sweep("pscore").replace(PROXIES, "proxies: [knn, logme]")
    with zoo_home(root, pscore=text):
        assert main(["run", str(root / "pscore.yaml"), "--no-report"]) == 0
        (root / "userproxy.py").write_text(USER)
        yield root


def _client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'home' / 'mlflow.db'}")


def _probe_runs(root: Path) -> dict[tuple[str, str], object]:
    client = _client(root)
    exp = client.get_experiment_by_name("pscore")
    runs = client.search_runs([exp.experiment_id], "tags.protocol = 'probe'")
    return {(r.data.tags["model"], r.data.tags["task"]): r for r in runs}


def _score(root: Path, function: str, *args: str) -> int:
    return main(["proxy", "score", f"{root / 'userproxy.py'}:{function}", "--experiment", "pscore",
                 "--no-report", *args])


@pytest.mark.slow
def test_a_function_scored_from_saved_features_equals_it_registered_as_a_proxy(env, capsys):
    import torch

    from selection.proxies.registry import PROXIES as REGISTRY
    from selection.proxies.registry import register_proxy
    from sweeps.paths import default_paths
    from sweeps.plan import Job, plan_sweep
    from sweeps.trials import TrialSettings, probe_trial

    assert _score(env, "centroid") == 0
    logged = {k: r.data.metrics["proxy/centroid"] for k, r in _probe_runs(env).items()}
    assert sorted(logged) == PAIRS

    spec = importlib.util.spec_from_file_location("userproxy_registered", env / "userproxy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    register_proxy("test_user_centroid")(module.centroid)
    threads = torch.get_num_threads()
    try:
        (env / "registered.yaml").write_text(sweep("pscore").replace(
            PROXIES, "proxies: [test_user_centroid]").replace("save_features: true", ""))
        plan = plan_sweep(env / "registered.yaml")
        paths = default_paths()
        settings = TrialSettings(plan.cfg, str(plan.data_root(paths)), str(paths.zoo_root),
                                 model_refs=plan.model_refs, task_refs=plan.task_refs)
        torch.set_num_threads(1)  # as a trial runs
        for model, task in PAIRS:
            metrics = probe_trial(Job("probe", model, task), settings)
            assert metrics["proxy/test_user_centroid"] == pytest.approx(logged[(model, task)],
                                                                        abs=1e-9, rel=0)
    finally:
        REGISTRY.unregister("test_user_centroid")
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_raising_nan_and_timeout_are_named_and_log_nothing_for_their_pair(env, capsys):
    assert _score(env, "bad", "--timeout", "20") == 1
    err = capsys.readouterr().err
    assert "3 pair(s) got no score, nothing logged for them" in err
    for (model, task), why in BAD.items():
        assert f"{model}@{task}: {why}" in err
    runs = _probe_runs(env)
    for pair in BAD:
        data = runs[pair].data
        assert "proxy/bad" not in data.metrics and "time/proxy/bad" not in data.metrics
        assert "proxy_fn/bad" not in data.tags
    good = runs[("tiny-shapes", "sprite_location")].data
    assert good.metrics["proxy/bad"] == 0.5 and "time/proxy/bad" in good.metrics
    assert good.tags["proxy_fn/bad"].endswith("userproxy.py:bad")


@pytest.mark.slow
def test_a_second_call_logs_nothing_new(env, capsys):
    assert _score(env, "centroid", "--name", "twice") == 0
    first = {k: (dict(r.data.metrics), dict(r.data.tags)) for k, r in _probe_runs(env).items()}
    capsys.readouterr()
    assert _score(env, "centroid", "--name", "twice") == 0
    assert "4 already scored, 0 to score" in capsys.readouterr().err
    again = {k: (dict(r.data.metrics), dict(r.data.tags)) for k, r in _probe_runs(env).items()}
    assert again == first
    client = _client(env)
    for run in _probe_runs(env).values():
        assert len(client.get_metric_history(run.info.run_id, "proxy/twice")) == 1


@pytest.mark.slow
def test_missing_features_are_named_and_recompute_reruns_only_those_pairs(env, capsys):
    assert _score(env, "centroid", "--name", "before") == 0
    runs = _probe_runs(env)
    lost = runs[("tiny-random", "digits")]
    cache = env / "home" / "features" / "pscore" / "tiny-random" / "digits.npz"
    artifact = Path(urlparse(lost.info.artifact_uri).path) / "features" / "digits.npz"
    assert cache.is_file() and artifact.is_file()
    cache.unlink()
    artifact.unlink()
    capsys.readouterr()

    assert _score(env, "centroid", "--name", "after") == 2
    err = capsys.readouterr().err
    assert "no saved features for 1 pair(s): tiny-random@digits" in err and "--recompute" in err
    assert not any("proxy/after" in r.data.metrics for r in _probe_runs(env).values())

    assert _score(env, "centroid", "--name", "after", "--recompute") == 0
    err = capsys.readouterr().err
    assert "recomputed the features of 1 pair(s): tiny-random@digits" in err
    assert cache.is_file()
    client = _client(env)
    assert "features/digits.npz" in {a.path for a in client.list_artifacts(lost.info.run_id,
                                                                           "features")}
    for run in _probe_runs(env).values():  # the forward pass again gives the same features
        assert run.data.metrics["proxy/after"] == pytest.approx(run.data.metrics["proxy/before"],
                                                                abs=1e-9, rel=0)


@pytest.mark.slow
def test_workers_score_the_pairs_on_ray_with_the_same_outcomes(env, capsys):
    assert _score(env, "centroid", "--name", "local") == 0
    assert _score(env, "centroid", "--name", "on_ray", "--workers", "2") == 0
    for run in _probe_runs(env).values():
        assert run.data.metrics["proxy/on_ray"] == run.data.metrics["proxy/local"]
    capsys.readouterr()
    assert _score(env, "bad", "--name", "bad_on_ray", "--workers", "2", "--timeout", "20") == 1
    err = capsys.readouterr().err
    for (model, task), why in BAD.items():
        assert f"{model}@{task}: {why}" in err
    runs = _probe_runs(env)
    assert [p for p, r in runs.items() if "proxy/bad_on_ray" in r.data.metrics] == [
        ("tiny-shapes", "sprite_location")]


# ---------------------------------------------------------------- no sweep needed (fast)
@pytest.mark.parametrize("function, message", [
    ("nocolon", "write MODULE:FUNCTION"),
    ("no_such_module_xyz:score", "cannot import no_such_module_xyz: ModuleNotFoundError"),
    ("{dir}/userproxy.py:absent", "has no 'absent'; its functions: centroid"),
    ("{dir}/missing.py:score", "missing.py: no such file"),
])
def test_a_function_that_cannot_be_loaded_is_one_line_and_exit_2(function, message, tmp_path,
                                                                 home, capsys):
    (tmp_path / "userproxy.py").write_text("def centroid(inputs):\n    return 0.0\n")
    rc = main(["proxy", "score", function.format(dir=tmp_path), "--experiment", "x",
               "--no-report"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not home.exists()  # nothing written


def test_a_registered_proxys_name_is_refused(tmp_path, home, capsys):
    (tmp_path / "logme.py").write_text("def logme(inputs):\n    return 0.0\n")
    assert main(["proxy", "score", f"{tmp_path / 'logme.py'}:logme", "--experiment", "x"]) == 2
    assert "proxy/logme is a registered proxy's metric" in capsys.readouterr().err


class _Inputs:
    n_classes = 2


@pytest.mark.parametrize("fn, why", [
    (lambda inputs: 1 / 0, "raised ZeroDivisionError: division by zero"),
    (lambda inputs: math.nan, "returned nan"),
    (lambda inputs: math.inf, "returned inf"),
    (lambda inputs: "high", "returned str 'high', not a number"),
    (lambda inputs: None, "returned NoneType 'None', not a number"),
])
def test_a_pair_without_a_finite_number_says_why(fn, why):
    value, seconds, error = evaluate(fn, _Inputs())
    assert value is None and error == why and seconds >= 0


def test_a_finite_number_is_the_value():
    import numpy as np

    value, _, error = evaluate(lambda inputs: np.float32(0.25) * inputs.n_classes, _Inputs())
    assert (value, error) == (0.5, None)
