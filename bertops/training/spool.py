"""What a training run tells MLflow, written first to a local append-only spool and shipped to the tracking
server by a background thread, in order, so that a tracking outage never blocks or kills training.

- `append` writes one JSON line (flushed) and returns at once: the training thread never waits on the network.
- The shipper sends consecutive metric records in batches (`log_batch`, at most 1000 metrics), tags and params,
  and the run's status, in the order they were spooled, and records the last shipped sequence number in
  `shipped.json` (written atomically) after each success. A failed call is retried after a pause, growing to
  `max_pause_s`, that new records do not cut short; nothing is dropped.
- A record shipped twice (a kill between the server's answer and `shipped.json`) is harmless: metrics keep the
  timestamp they were spooled with, and MLflow's SQL store keeps one row per (key, timestamp, step, value)
  (checked: logging the same batch twice leaves one entry per step in the history); tags and params are set to
  the same value again; a status update is idempotent.
- After a successful call the shipper waits `interval_s` (1 s) before the next, so that a second's records go in
  one call: a flush every few steps of a fast model would otherwise be a request each, and the server's work
  on them competes with training for the same cores (measured in tests/test_spool.py: 4x slower steps of the
  tiny model with a call per flush). `drain` cuts the wait short.
- `drain(timeout)` waits until everything spooled so far is shipped; False if the server is still unreachable.
  The spool stays on disk: a new RunSpool on the same directory ships what is left.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from bertops.files import write_atomic

log = logging.getLogger(__name__)
BATCH = 1000  # MLflow's limit of metrics per log_batch


class RunSpool:
    def __init__(self, directory: Path, client, run_id: str, *, max_pause_s: float = 10.0, interval_s: float = 1.0):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file, self.shipped_file = self.dir / "spool.jsonl", self.dir / "shipped.json"
        self.client, self.run_id, self.max_pause_s, self.interval_s = client, run_id, max_pause_s, interval_s
        self._draining = 0  # callers waiting in drain: the shipper skips its interval
        self.records = self._read()
        self.shipped = json.loads(self.shipped_file.read_text())["seq"] if self.shipped_file.is_file() else 0
        self._lock = threading.Condition()
        self._stop = False
        self._out = self.file.open("a")
        self.failures = 0  # calls that failed (an outage), for the caller's report
        self._thread = threading.Thread(target=self._ship_loop, name="bertops-mlflow-spool", daemon=True)
        self._thread.start()

    # ---- the training thread ------------------------------------------------------------------------------------
    def metrics(self, metrics: list[tuple[str, float, int, int]]) -> None:
        """(key, value, timestamp_ms, step) rows."""
        if metrics:
            self._append({"kind": "metrics", "rows": [list(m) for m in metrics]})

    def tags(self, tags: dict[str, str]) -> None:
        self._append({"kind": "tags", "tags": dict(tags)})

    def params(self, params: dict[str, str]) -> None:
        self._append({"kind": "params", "params": dict(params)})

    def status(self, status: str) -> None:
        """RUNNING, FINISHED, FAILED or KILLED."""
        self._append({"kind": "status", "status": status})

    def _append(self, record: dict) -> None:
        with self._lock:
            record = {"seq": len(self.records) + 1, **record}
            self._out.write(json.dumps(record) + "\n")
            self._out.flush()
            self.records.append(record)
            self._lock.notify_all()

    def pending(self) -> int:
        with self._lock:
            return len(self.records) - self.shipped

    def drain(self, timeout: float) -> bool:
        """Wait until every record spooled so far is shipped (True), or `timeout` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._draining += 1
            self._lock.notify_all()
            try:
                target = len(self.records)
                while self.shipped < target:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._lock.wait(min(left, 1.0))
            finally:
                self._draining -= 1
        return True

    def close(self) -> None:
        """Stop shipping (call `drain` first to ship what waits); records left stay in the spool."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        self._thread.join(timeout=30)
        self._out.close()

    # ---- the shipper ------------------------------------------------------------------------------------------
    def _read(self) -> list[dict]:
        if not self.file.is_file():
            return []
        records = []
        for line in self.file.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill mid-write: it was never acknowledged to anyone
        return records

    def _next_batch(self) -> list[dict]:
        """The next records to ship in one call: consecutive metric records up to BATCH rows, or one other."""
        batch, rows = [], 0
        for record in self.records[self.shipped:]:
            if record["kind"] != "metrics":
                return batch or [record]
            if batch and rows + len(record["rows"]) > BATCH:
                break
            batch.append(record)
            rows += len(record["rows"])
        return batch

    def _ship(self, batch: list[dict]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        first = batch[0]
        if first["kind"] == "metrics":
            metrics = [Metric(k, float(v), int(ts), int(step)) for r in batch for k, v, ts, step in r["rows"]]
            for start in range(0, len(metrics), BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[start:start + BATCH])
        elif first["kind"] == "tags":
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in first["tags"].items()])
        elif first["kind"] == "params":
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in first["params"].items()])
        elif first["kind"] == "status":
            if first["status"] == "RUNNING":
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                self.client.set_terminated(self.run_id, first["status"])

    def _ship_loop(self) -> None:
        pause = 0.5
        while True:
            with self._lock:
                while not self._stop and self.shipped >= len(self.records):
                    self._lock.wait()
                if self._stop:
                    return  # what is left stays in the spool: the next RunSpool on this directory ships it
                batch = self._next_batch()
            try:
                self._ship(batch)
            except Exception as exc:  # noqa: BLE001 - an outage of any kind: wait and ship again
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    log.warning("MLflow unreachable (%s); %d records wait in %s", exc, self.pending(), self.file)
                with self._lock:
                    if self._stop:
                        return  # closing with records left: they stay in the spool for the next run
                    # the whole pause: new records notify the lock, and waking on them would retry at every
                    # flush (measured: 32 failed calls in 0.6 s, training 2.5x slower during an outage)
                    self._lock.wait_for(lambda: self._stop, timeout=pause)
                pause = min(pause * 2, self.max_pause_s)
                continue
            pause = 0.5
            with self._lock:
                self.shipped = batch[-1]["seq"]
                write_atomic(self.shipped_file, json.dumps({"seq": self.shipped}) + "\n")
                self._lock.notify_all()
                # let the next second's records gather into one call, unless someone waits for them
                self._lock.wait_for(lambda: self._stop or self._draining, timeout=self.interval_s)
