"""Two drivers of one sweep at once against the real server stack (PostgreSQL behind MLflow with
basic auth, S3 artifacts on moto; all on loopback): what ``tests/two_drivers.py`` says must hold,
with the lease on the server as every node of a cluster would see it."""

from __future__ import annotations

import pytest

from tests import two_drivers

pytestmark = pytest.mark.cluster


def test_two_drivers_against_the_server_train_each_key_once(stack, tmp_path, short_tmp,
                                                             monkeypatch):
    from mlflow.tracking import MlflowClient

    for name, value in stack.client_env().items():
        monkeypatch.setenv(name, value)
    config, home = two_drivers.prepare(tmp_path)
    client = MlflowClient(stack.tracking_uri)
    eid = two_drivers.plant_dead_lease(client, "twice")
    env = {**two_drivers.environ_without_tracking(), **stack.client_env()}
    results = two_drivers.run_both(config, home, [short_tmp("s"), short_tmp("s")], env, tmp_path)
    runs = [(r.data.tags["pair_key"], r.info.status)
            for r in client.search_runs([eid], max_results=100) if r.data.tags.get("pair_key")]
    two_drivers.check_outcome(results, runs,
                              two_drivers.lease_tags(client.get_experiment(eid).tags))
    assert not (home / "mlflow.db").exists()  # everything went to the server
