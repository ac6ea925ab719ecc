"""How long a study has been worked on, from its first command to its report
(``results.json``'s ``environment.study_wall_seconds``), over every invocation of ``longtail
reproduce`` into its ``--out``: a study cut short (a timeout, Ctrl-C) and run again to resume, seeds
trained by processes of their own, a finished study reported again.

Each invocation keeps a record of its own, ``OUT/invocations/<start>-<pid>.json`` with when it
started and when it was last seen working (seconds since the epoch), written atomically when its
training begins, every ``HEARTBEAT_SECONDS`` while it runs (so an invocation killed without warning
loses at most that much) and when it reports. The study's wall time is the length of the union of
the records' intervals: invocations one after another add up, and seeds trained side by side count
once. Only an invocation that passed every check writes a record: a refused one writes nothing.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from longtail.runs import atomic_write_json, read_json

INVOCATIONS_DIR = "invocations"
HEARTBEAT_SECONDS = 10.0


class Invocation:
    """This invocation's record in ``out``, kept up to date by a background heartbeat between
    ``with`` and ``finish()`` (or the end of the ``with``), from ``start`` (``time.time()``)."""

    def __init__(self, out: Path, start: float):
        self.path = Path(out) / INVOCATIONS_DIR / f"{time.time_ns()}-{os.getpid()}.json"
        self.start = self.end = start
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._heartbeat = threading.Thread(target=self._beat, name="longtail-study-wall", daemon=True)

    def _write(self) -> None:
        with self._lock:
            self.end = max(self.end, time.time())
            atomic_write_json(self.path, {"start": self.start, "end": self.end, "pid": os.getpid()})

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self._write()

    def __enter__(self) -> Invocation:
        self._write()
        self._heartbeat.start()
        return self

    def finish(self) -> float:
        """Stop the heartbeat, record now as the end, and return this invocation's seconds."""
        if not self._stop.is_set():
            self._stop.set()
            self._heartbeat.join()
            self._write()
        return self.end - self.start

    def __exit__(self, *exc) -> None:
        self.finish()


def study_wall_seconds(out: Path) -> float:
    """The length of the union of every recorded invocation's interval under ``out``."""
    intervals = sorted(
        (record["start"], record["end"])
        for record in (read_json(path) for path in (Path(out) / INVOCATIONS_DIR).glob("*.json"))
    )
    total, covered_until = 0.0, float("-inf")
    for start, end in intervals:
        if end > covered_until:
            total += end - max(start, covered_until)
            covered_until = end
    return total
