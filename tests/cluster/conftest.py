"""Fixtures of the cluster tests: one tracking stack and one built tiny zoo per session.

The stack is ``mlflow_server.local.local_stack`` (PostgreSQL, moto's S3 server and the MLflow
server with basic auth, on loopback, free ports); it is stopped at the end of the session, also
when a test fails. A test that stops the MLflow server starts it again before it ends.
"""

from __future__ import annotations

import shutil

import pytest

from tests.cluster import services
from tests.tiny import ZOO

SEED_TASKS = ("digits", "sprite_location")


@pytest.fixture(scope="session")
def stack():
    from mlflow_server.local import local_stack

    root = services.stack_root()
    try:
        with local_stack(root, durable=False, workers=1) as s:
            yield s
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def mlflow_up(stack):
    """The stack, with its MLflow server running again after the test, whatever happened."""
    yield stack
    if not stack.mlflow_running:
        stack.start_mlflow()


@pytest.fixture()
def rest(stack):
    return services.Rest(stack.tracking_uri, stack.username, stack.password)


@pytest.fixture(scope="session")
def seed(tmp_path_factory):
    """A home with the tiny zoo built and the seed tasks cached, to copy into each test's home.

    Built with the plain functions (``build_model``, ``build_suite``): no Ray needed here.
    """
    from lightning_modules.offline import build_suite
    from sweeps.trials import build_model
    from sweeps.zoo_config import load_zoo_config

    root = tmp_path_factory.mktemp("cluster-seed")
    (root / "zoo.yaml").write_text(ZOO)
    zoo = load_zoo_config(root / "zoo.yaml")
    home = root / "home"
    for model in zoo.models:
        build_model(zoo, model.name, home / "zoo", home / "data")
    build_suite(home / "data", list(SEED_TASKS), image_size=32, seed=0)
    return root


@pytest.fixture()
def wm_home(seed, tmp_path):
    """A fresh WHICHMODEL_HOME holding the built zoo and tasks, and the zoo file beside it."""
    (tmp_path / "zoo.yaml").write_text(ZOO)
    return services.seed_home(seed / "home", tmp_path / "home")
