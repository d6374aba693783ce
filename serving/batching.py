"""Dynamic batching: concurrent requests to one signature become one model call.

A batch closes when it holds ``max_batch_size`` rows, when ``timeout`` has passed since
its first request arrived (TF Serving's ``batch_timeout_micros``), or as soon as every
predict request now inside the server is already in it: a lone client is never made to
wait for company that cannot come, while under load batches fill up.

Batches run on the request threads themselves, not on a worker thread: the request that
finds no batch in progress leads one (collects the queue and calls the model); requests
arriving meanwhile queue, and when the model call returns the leader hands the lead to the
oldest of them before sending the results out. A lone request so runs in its own thread
with no hand-off and no queueing at all (a worker thread costs two thread wake-ups per
request, which on busy cores cost more than batching saves), and one model call runs at a
time per signature.

Only servables that run batches as one graph call use it (SavedModels); TFLite models take
one event per invocation and run on an interpreter pool instead.

Requests whose non-batch shapes differ (e.g. a dynamic-length input) run in separate
calls. If a merged call fails, each request is retried alone, so one client's bad input
never fails another client's request.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]


class InFlight:
    """Counts one model's predict requests currently inside the server (all front ends)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        # Batch leaders waiting for company: a request leaving may leave everyone already in.
        self._watchers: set[Callable[[], None]] = set()

    def __enter__(self) -> InFlight:
        with self._lock:
            self.count += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.count -= 1
            watchers = list(self._watchers) if self._watchers else ()
        for wake in watchers:
            wake()

    def watch(self, wake: Callable[[], None], on: bool) -> None:
        """Call ``wake`` whenever a request leaves (``on``), or stop calling it."""
        with self._lock:
            if on:
                self._watchers.add(wake)
            else:
                self._watchers.discard(wake)


class _Task:
    """One request: its inputs, then its outcome (or the order to lead the next batch)."""

    __slots__ = ("inputs", "rows", "arrived", "done", "result", "error", "lead")

    def __init__(self, inputs: Arrays, rows: int) -> None:
        self.inputs = inputs
        self.rows = rows
        self.arrived = time.monotonic()
        self.done = threading.Event()
        self.result: Arrays | None = None
        self.error: BaseException | None = None
        self.lead = False

    def key(self) -> tuple:
        return tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in self.inputs.items()))

    def finish(self, result: Arrays | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class Batcher:
    """Merges concurrent ``submit`` calls into calls of ``run`` on up to ``max_batch_size`` rows."""

    def __init__(
        self,
        run: RunFn,
        max_batch_size: int,
        timeout_s: float,
        in_flight: InFlight | None = None,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max(1, max_batch_size)
        self.timeout_s = max(0.0, timeout_s)
        self._in_flight = in_flight
        self._on_batch = on_batch
        self._cond = threading.Condition(threading.Lock())
        self._pending: deque[_Task] = deque()
        self._leading = False  # a request thread is collecting or running a batch
        self._collecting = False  # ... and waits for more requests (submit must wake it)
        self._closed = False

    def submit(self, inputs: Arrays, rows: int) -> Arrays:
        """Run ``inputs`` (``rows`` rows) as part of a batch; blocks until the answer is ready."""
        with self._cond:
            alone = not self._closed and not self._leading and self._everyone_here(1)
            if alone:
                self._leading = True
        if alone:  # nothing queued, running or coming: the batch of one runs now, with no queueing
            try:
                result = self._run(inputs)
            finally:
                self._hand_on()  # requests that arrived meanwhile queued: the oldest leads them
            if self._on_batch:
                self._on_batch(rows, 1)
            return result
        task = _Task(inputs, rows)
        with self._cond:
            if self._closed:
                closed = True
            else:
                closed = False
                self._pending.append(task)
                lead = not self._leading
                if lead:
                    self._leading = True
                elif self._collecting:
                    self._cond.notify_all()
        if closed:
            return self._run(inputs)  # the version is unloading: run directly
        if not lead:
            task.done.wait()
            if task.lead:  # promoted: the previous leader's call is over and this one is oldest
                task.lead = False
                task.done.clear()
                self._lead()
        else:
            self._lead()
        task.done.wait()  # set by the batch this thread led, or by another leader
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    def close(self) -> None:
        """Finish queued work (its requests' threads run it), then make later submits run directly."""
        deadline = time.monotonic() + 30
        with self._cond:
            self._closed = True
            while (self._leading or self._pending) and time.monotonic() < deadline:
                self._cond.wait(0.05)

    # -- the leading request's thread ----------------------------------------------------
    def _everyone_here(self, tasks: int) -> bool:
        return self._in_flight is not None and self._in_flight.count <= tasks

    def _collect(self) -> list[_Task]:
        """Take the oldest queued request and whatever joins it before the batch closes (lock held)."""
        first = self._pending.popleft()
        batch, rows = [first], first.rows
        deadline = first.arrived + self.timeout_s
        # Watch departures before the first "everyone here?" test: a request that leaves between
        # the test and the wait still wakes this leader (its wake-up waits for the lock we hold).
        if self._in_flight is not None:
            self._in_flight.watch(self._wake, True)
        try:
            while rows < self.max_batch_size:
                if not self._pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._everyone_here(len(batch)):
                        break
                    # Requests counted in flight but not queued yet will arrive here; one that
                    # fails before submitting only costs this batch the rest of the timeout.
                    self._collecting = True
                    self._cond.wait(remaining)
                    self._collecting = False
                    continue
                if rows + self._pending[0].rows > self.max_batch_size:
                    break
                task = self._pending.popleft()
                batch.append(task)
                rows += task.rows
        finally:
            if self._in_flight is not None:
                self._in_flight.watch(self._wake, False)
        return batch

    def _lead(self) -> None:
        """Collect a batch, call the model, pass the lead on, then deliver the results."""
        with self._cond:
            batch = self._collect()
        outcomes: list[tuple[_Task, Arrays | None, BaseException | None]] = []
        try:
            groups: dict[tuple, list[_Task]] = {}
            for task in batch:
                groups.setdefault(task.key(), []).append(task)
            for tasks in groups.values():
                outcomes += self._execute(tasks)
        except BaseException as e:  # noqa: BLE001  (an interrupt: no request may wait forever)
            answered = {id(t) for t, _, _ in outcomes}
            outcomes += [(t, None, e) for t in batch if id(t) not in answered]
            raise
        finally:
            self._hand_on()  # the next batch collects while these results go out
            for task, result, error in outcomes:
                task.finish(result, error)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _hand_on(self) -> None:
        """The oldest queued request leads the next batch; none queued: the next arrival will."""
        with self._cond:
            if self._pending:
                nxt = self._pending[0]
                nxt.lead = True
                nxt.done.set()
            else:
                self._leading = False
                if self._closed:
                    self._cond.notify_all()

    def _execute(self, tasks: list[_Task]) -> list[tuple[_Task, Arrays | None, BaseException | None]]:
        """Requests of one shape as one model call (each alone if it fails): their outcomes."""
        if len(tasks) > 1:
            merged = {k: np.concatenate([t.inputs[k] for t in tasks], axis=0) for k in tasks[0].inputs}
            rows = sum(t.rows for t in tasks)
            try:
                out = self._run(merged)
                if any(v.ndim == 0 or v.shape[0] != rows for v in out.values()):
                    raise ValueError("outputs are not batch-major; cannot split a merged call")
                if self._on_batch:
                    self._on_batch(rows, len(tasks))
            except Exception:  # noqa: BLE001  (retry alone so only the bad request fails)
                pass
            else:
                outcomes = []
                start = 0
                for task in tasks:
                    end = start + task.rows
                    outcomes.append((task, {k: v[start:end] for k, v in out.items()}, None))
                    start = end
                return outcomes
        return [self._call(task) for task in tasks]

    def _call(self, task: _Task) -> tuple[_Task, Arrays | None, BaseException | None]:
        try:
            out = self._run(task.inputs)
            if self._on_batch:
                self._on_batch(task.rows, 1)
        except Exception as e:  # noqa: BLE001  (the request's thread re-raises it)
            return task, None, e
        return task, out, None
