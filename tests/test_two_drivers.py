"""Two drivers of one sweep at once, against the local SQLite store (``tests/two_drivers.py``
says what must hold; ``tests/cluster/test_two_drivers_server.py`` runs it against the server
stack): one runs the sweep, taking over a dead driver's lease and saying so; the other is refused
before any trial with one line naming the holder and since when; one finished run per key."""

from __future__ import annotations

import pytest

from tests import two_drivers

pytestmark = pytest.mark.slow


def test_two_drivers_of_one_sweep_at_once_train_each_key_once(tmp_path, short_tmp):
    from mlflow.tracking import MlflowClient

    config, home = two_drivers.prepare(tmp_path)
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")  # the store exists, as after a sweep
    eid = two_drivers.plant_dead_lease(client, "twice")
    results = two_drivers.run_both(config, home, [short_tmp("d"), short_tmp("d")],
                                   two_drivers.environ_without_tracking(), tmp_path)
    runs = [(r.data.tags["pair_key"], r.info.status)
            for r in client.search_runs([eid], max_results=100) if r.data.tags.get("pair_key")]
    two_drivers.check_outcome(results, runs,
                              two_drivers.lease_tags(client.get_experiment(eid).tags))
