"""Dynamic batching: concurrent requests to one signature become one model call.

A batch closes when it holds ``max_batch_size`` rows, when ``timeout`` has passed since
its first request arrived (TF Serving's ``batch_timeout_micros``), or as soon as no predict
request of the model is on its way in (every one inside the server is already batched or
queued): a lone client is never made to wait for company that cannot come, while under
load batches fill up.

Batches run on the request threads themselves, not on worker threads. There are ``threads``
batch slots (TF Serving's ``num_batch_threads``, the config's ``serving.num_batch_threads``).
A request that finds a free slot and no batch open leads one: it collects the queue and calls
the model. Requests arriving while a batch is open join it, as in TF Serving (one open batch
per queue). Requests arriving while every slot is busy queue; when a leader's model call
returns, it hands its slot to the oldest of them before sending the results out. A lone
request so runs in its own thread with no hand-off and no queueing at all (a worker thread
costs two thread wake-ups per request, which on busy cores cost more than batching saves), and
up to ``threads`` model calls run side by side.

Only servables that run batches as one graph call use it (SavedModels); TFLite models take
one event per invocation and run on an interpreter pool instead.

Requests whose non-batch shapes differ (e.g. a dynamic-length input) run in separate
calls. If a merged call fails, each request is retried alone, so one client's bad input
never fails another client's request.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]


def default_threads() -> int:
    """TF Serving's ``num_batch_threads`` default: one batch thread per core this process may use."""
    return len(os.sched_getaffinity(0)) or 1


@dataclass(frozen=True)
class BatchingOptions:
    """What the batcher applies: ``max_batch_size`` of 1 or less turns batching off."""

    max_batch_size: int
    batch_timeout_s: float
    threads: int = 1  # batches collected or run at once per signature (num_batch_threads)

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


NO_BATCHING = BatchingOptions(0, 0.0)


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
    """Merges concurrent ``submit`` calls into calls of ``run`` on up to ``max_batch_size`` rows.

    ``threads``: how many batches may be collected or run at once (at least 1).
    """

    def __init__(
        self,
        run: RunFn,
        max_batch_size: int,
        timeout_s: float,
        in_flight: InFlight | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        threads: int = 1,
    ) -> None:
        self._run = run
        self.max_batch_size = max(1, max_batch_size)
        self.timeout_s = max(0.0, timeout_s)
        self.threads = max(1, threads)
        self._in_flight = in_flight
        self._on_batch = on_batch
        self._cond = threading.Condition(threading.Lock())
        self._pending: deque[_Task] = deque()  # waiting for a batch slot
        self._leaders = 0  # request threads collecting or running a batch (<= threads)
        self._inside = 0  # requests inside submit: queued, batched, or on their way out
        self._collecting = 0  # leaders waiting for more requests (submit must wake them)
        self._closed = False

    def submit(self, inputs: Arrays, rows: int) -> Arrays:
        """Run ``inputs`` (``rows`` rows) as part of a batch; blocks until the answer is ready."""
        task = None
        with self._cond:
            self._inside += 1
            closed = self._closed
            # A free slot and no open batch to join: this request starts one (or, with nobody
            # else coming, runs alone). Otherwise it queues for the collecting leader or a slot.
            start = not closed and self._leaders < self.threads and not self._collecting and not self._pending
            alone = start and self._none_coming()
            if start:
                self._leaders += 1
            if not closed and not alone:
                task = _Task(inputs, rows)
                if not start:
                    self._pending.append(task)
                    if self._collecting:
                        self._cond.notify_all()
        try:
            if closed:
                return self._run(inputs)  # the version is unloading: run directly
            if alone:  # nobody to wait for: the batch of one runs now, with no queue entry
                return self._run_alone(inputs, rows)
            assert task is not None
            return self._await(task, lead=start)
        finally:
            with self._cond:
                self._inside -= 1

    def close(self) -> None:
        """Finish queued work (its requests' threads run it), then make later submits run directly."""
        deadline = time.monotonic() + 30
        with self._cond:
            self._closed = True
            while (self._leaders or self._pending) and time.monotonic() < deadline:
                self._cond.wait(0.05)

    # -- request threads ------------------------------------------------------------------
    def _run_alone(self, inputs: Arrays, rows: int) -> Arrays:
        try:
            result = self._run(inputs)
        finally:
            self._hand_on()  # requests that arrived meanwhile queued: the oldest takes the slot
        if self._on_batch:
            self._on_batch(rows, 1)
        return result

    def _await(self, task: _Task, lead: bool) -> Arrays:
        """Lead a batch from ``task``, or wait until a leader answers it or promotes it to lead."""
        if not lead:
            task.done.wait()
            if task.lead:  # promoted: it was the oldest queued when a slot came free
                task.lead = False
                task.done.clear()
                lead = True
        if lead:
            self._lead(task)
        task.done.wait()  # set by the batch this thread led, or by another leader
        if task.error is not None:
            raise task.error
        assert task.result is not None
        return task.result

    # -- the leading request's thread ----------------------------------------------------
    def _none_coming(self) -> bool:
        """No predict request of the model is between the front end and ``submit`` (lock held)."""
        return self._in_flight is not None and self._in_flight.count <= self._inside

    def _collect(self, batch: list[_Task]) -> None:
        """Add to ``batch`` (its first request) whatever queues before the batch closes (lock held).

        Requests are appended as they are taken, so if anything interrupts the wait, every taken
        request is still in ``batch`` for the leader to answer.
        """
        first = batch[0]
        rows = first.rows
        deadline = first.arrived + self.timeout_s

        def wake() -> None:  # one object per collecting leader: the watcher set keeps each
            self._wake()

        # Watch departures before the first "anyone coming?" test: a request that leaves between
        # the test and the wait still wakes this leader (its wake-up waits for the lock we hold).
        if self._in_flight is not None:
            self._in_flight.watch(wake, True)
        try:
            while rows < self.max_batch_size:
                if not self._pending:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._none_coming():
                        break
                    # Requests in flight but not in submit yet will queue for this batch (a free
                    # slot is not taken while a batch is open); one that fails before submitting
                    # only costs this batch the rest of the timeout.
                    self._collecting += 1
                    try:
                        self._cond.wait(remaining)
                    finally:
                        self._collecting -= 1
                    continue
                if rows + self._pending[0].rows > self.max_batch_size:
                    break
                task = self._pending.popleft()
                batch.append(task)
                rows += task.rows
        finally:
            if self._in_flight is not None:
                self._in_flight.watch(wake, False)
            self._promote()  # requests left queued (the batch is full) take the free slots

    def _lead(self, first: _Task) -> None:
        """Collect a batch, call the model, pass the slot on, then deliver the results."""
        batch = [first]
        outcomes: list[tuple[_Task, Arrays | None, BaseException | None]] = []
        try:
            with self._cond:
                self._collect(batch)
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

    def _promote(self) -> None:
        """Queued requests take the free slots, oldest first (lock held)."""
        while self._pending and self._leaders < self.threads and not self._collecting:
            self._leaders += 1
            self._give_lead(self._pending.popleft())

    @staticmethod
    def _give_lead(task: _Task) -> None:
        task.lead = True
        task.done.set()

    def _hand_on(self) -> None:
        """The oldest queued request takes over this slot; none queued: the slot is free."""
        with self._cond:
            if self._pending:
                self._give_lead(self._pending.popleft())
            else:
                self._leaders -= 1
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
