"""MLflow through one client: what the driver writes and what the UI shows.

``client`` (:class:`~sweeps.tracking.client.Tracker`: runs keyed by ``pair_key``, the report's
reads, the preflight), ``pairs`` (a pair's run as plain data: the record written, the records
read back), ``recorder`` (the Tune callback that turns finished trials into pair records),
``writer`` (the thread that logs them from a bounded queue; what *acknowledged* means),
``spool`` (records kept on disk: the writer's journal, and results while the tracking server is
down), ``outage`` (what counts as one: retries, the preflight), ``artifacts`` (finished runs'
artifacts fetched concurrently and cached) and ``ui`` (what the MLflow UI shows: the experiment
kind, dataset inputs, run times, SQLite's write-ahead setup). Importing the package imports none
of them (nor MLflow).
"""
