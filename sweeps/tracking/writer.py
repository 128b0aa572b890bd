"""The recorder's writer: pair records go to MLflow from a bounded queue, on a thread of their own.

The Tune callback runs on the driver's event loop. :meth:`Writer.put` journals a completed
pair's record into the spool (one file, written atomically and fsynced:
:class:`~sweeps.tracking.spool.Spool`) and hands it to a bounded queue; the callback returns at
once, so a slow tracking server never stalls Tune. The writer thread logs the records in order
through :meth:`~sweeps.tracking.client.Tracker.record_pair` (retries, then the outage spool) and
deletes each journal file once its run is FINISHED. A full queue (``QUEUE_SIZE`` records)
blocks the callback until the writer catches up: the driver slows down, nothing is dropped.

**Acknowledged.** A pair's result is *acknowledged* when the callback that completed the pair
returns (:meth:`PairRecorder.on_result <sweeps.tracking.recorder.PairRecorder.on_result>`): by
then its complete record is on disk in ``$WHICHMODEL_HOME/spool/<experiment>/`` (fsynced) or its
run is FINISHED in MLflow. A driver killed at any moment loses nothing acknowledged: the records
still queued are journal files in the spool, which the next ``whichmodel run`` or ``resume``
replays before anything else, keyed by ``pair_key`` (a half-logged run is resumed by id, a
finished one left alone). Results of trials that finished but whose pair was not yet complete
(a fine-tune still waiting for a repetition) are not acknowledged; ``resume`` gets them back
from Tune's own experiment state, or runs those trials again.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sweeps.tracking.artifacts import keep_artifacts

QUEUE_SIZE = 128  # records in memory (a fine-tune record of the paper's size: ~10 kB of JSON)


class Writer:
    """A bounded queue of pair records and the thread that logs them (started on the first
    :meth:`put`, ended by :meth:`close`, started again by a later put)."""

    def __init__(self, tracker, spool=None, maxsize: int = QUEUE_SIZE, cache_dir=None):
        self.tracker, self.spool, self.maxsize = tracker, spool, maxsize
        self.cache_dir = cache_dir  # a logged run's predictions go there too (a report reads them)
        self.queue: queue.Queue | None = None
        self.thread: threading.Thread | None = None
        self.logged = 0
        self.failures: list[str] = []  # records that are not an outage's, left in the spool
        self.seconds: list[tuple[str, float]] = []  # (protocol, seconds) of each logged pair
        self.waited_s = 0.0  # time the driver spent waiting on a full queue

    def put(self, record: dict[str, Any], resume_run_id: str | None = None) -> None:
        """Journal the record, then queue it; blocks while the queue is full."""
        path = None
        if self.spool is not None:
            path = self.spool.put({**record, "spooled_at": time.time(), "reason": "queued"})
        if self.thread is None:
            self.queue = queue.Queue(self.maxsize)
            self.thread = threading.Thread(target=self._run, name="whichmodel-mlflow-writer",
                                           daemon=True)
            self.thread.start()
        start = time.perf_counter()
        self.queue.put((path, record, resume_run_id))
        self.waited_s += time.perf_counter() - start

    def close(self) -> None:
        """Log everything queued, then end the thread."""
        if self.thread is None:
            return
        self.queue.put(None)
        self.thread.join()
        self.thread = self.queue = None

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            path, record, resume_run_id = item
            if path is not None and not Path(path).exists():
                continue  # a replay of the spool (the server came back) logged it already
            start = time.perf_counter()
            try:
                run_id = self.tracker.record_pair(record, resume_run_id=resume_run_id)
            except Exception as exc:  # not an outage: this record cannot be logged as it is
                self.failures.append(f"{record['protocol']} {record['model']}@{record['task']}: "
                                     f"MLflow refused its run ({type(exc).__name__}: "
                                     f"{' '.join(str(exc).split())[:160]})"
                                     + (f"; its record waits in {path}" if path else ""))
                print(f"[whichmodel] {record['run_name']} could not be logged: {exc}",
                      file=sys.stderr, flush=True)
                continue
            if run_id is None:
                continue  # the server is away: the record waits in the spool
            if path is not None:
                self.spool.discard(path)
            self.logged += 1
            self.seconds.append((record["protocol"], time.perf_counter() - start))
            if self.cache_dir is not None:
                keep_artifacts(self.cache_dir, run_id, record)
