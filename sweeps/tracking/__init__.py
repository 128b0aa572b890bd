"""MLflow through one client: what the driver writes and what the UI shows.

``client`` (:class:`~sweeps.tracking.client.Tracker`: runs keyed by ``pair_key``, the report's
reads, the preflight), ``recorder`` (the Tune callback that logs each finished trial), ``spool``
(results kept on disk while the tracking server is down) and ``ui`` (what the MLflow UI shows:
the experiment kind, dataset inputs, run times, SQLite's write-ahead setup). Importing the
package imports none of them (nor MLflow).
"""
