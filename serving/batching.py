"""Dynamic batching: concurrent requests to one signature become one model call.

A batch closes when it holds ``max_batch_size`` rows, when ``timeout`` has passed since
its first request arrived (TF Serving's ``batch_timeout_micros``), or as soon as every
predict request now inside the server is already in it: a lone client is never made to
wait for company that cannot come, while under load batches fill up.

Only servables that run batches as one graph call use it (SavedModels); TFLite models take
one event per invocation and run on an interpreter pool instead.

Requests whose non-batch shapes differ (e.g. a dynamic-length input) run in separate
calls. If a merged call fails, each request is retried alone, so one client's bad input
never fails another client's request.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]


class InFlight:
    """Counts predict requests currently inside the server (all front ends)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self) -> InFlight:
        with self._lock:
            self.count += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.count -= 1


@dataclass
class _Task:
    inputs: Arrays
    rows: int
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)

    def key(self) -> tuple:
        return tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in self.inputs.items()))


_STOP = object()


class Batcher:
    """Merges concurrent ``submit`` calls into calls of ``run`` on up to ``max_batch_size`` rows."""

    def __init__(
        self,
        run: RunFn,
        max_batch_size: int,
        timeout_s: float,
        in_flight: InFlight | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        name: str = "batcher",
    ) -> None:
        self._run = run
        self.max_batch_size = max(1, max_batch_size)
        self.timeout_s = max(0.0, timeout_s)
        self._in_flight = in_flight
        self._on_batch = on_batch
        self._queue: queue.Queue = queue.Queue()
        self._carry: _Task | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._lock = threading.Lock()
        self._thread.start()

    def submit(self, inputs: Arrays, rows: int) -> Arrays:
        """Run ``inputs`` (``rows`` rows) as part of a batch; blocks until the answer is ready."""
        task = _Task(inputs, rows)
        with self._lock:
            closed = self._closed
            if not closed:
                self._queue.put(task)
        if closed:
            return self._run(inputs)  # the version is unloading: run directly
        return task.future.result()

    def close(self) -> None:
        """Finish queued work, then stop the worker thread (later submits run directly)."""
        with self._lock:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout=30)

    # -- worker --------------------------------------------------------------------------
    def _everyone_here(self, tasks: int) -> bool:
        return self._in_flight is not None and self._in_flight.count <= tasks

    def _collect(self, first: _Task) -> list[_Task]:
        batch, rows = [first], first.rows
        deadline = first.arrived + self.timeout_s
        while rows < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._everyone_here(len(batch)):
                    break
                try:
                    # Requests counted in flight but not queued yet will arrive here; one that
                    # fails before submitting only costs this batch the rest of the timeout.
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                self._queue.put(_STOP)
                break
            if rows + item.rows > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            rows += item.rows
        return batch

    def _loop(self) -> None:
        while True:
            if self._carry is not None:
                first, self._carry = self._carry, None
            else:
                first = self._queue.get()
            if first is _STOP:
                return
            batch = self._collect(first)
            groups: dict[tuple, list[_Task]] = {}
            for task in batch:
                groups.setdefault(task.key(), []).append(task)
            for tasks in groups.values():
                self._execute(tasks)

    def _execute(self, tasks: list[_Task]) -> None:
        if len(tasks) == 1:
            self._call(tasks[0])
            return
        merged = {k: np.concatenate([t.inputs[k] for t in tasks], axis=0) for k in tasks[0].inputs}
        rows = sum(t.rows for t in tasks)
        try:
            out = self._run(merged)
            if any(v.ndim == 0 or v.shape[0] != rows for v in out.values()):
                raise ValueError("outputs are not batch-major; cannot split a merged call")
            if self._on_batch:
                self._on_batch(rows, len(tasks))
        except Exception:  # noqa: BLE001  (retry alone so only the bad request fails)
            for task in tasks:
                self._call(task)
            return
        start = 0
        for task in tasks:
            end = start + task.rows
            task.future.set_result({k: v[start:end] for k, v in out.items()})
            start = end

    def _call(self, task: _Task) -> None:
        try:
            out = self._run(task.inputs)
            if self._on_batch:
                self._on_batch(task.rows, 1)
            task.future.set_result(out)
        except Exception as e:  # noqa: BLE001  (the caller re-raises it)
            task.future.set_exception(e)
