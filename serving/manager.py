"""The model manager: which versions are on disk, loaded, serving, or failed.

It polls the model's base path (its directory of version directories) every ``poll_seconds``, loads
the versions the policy wants in a background thread (one at a time), and publishes the set of
serving versions as an immutable snapshot that request threads read without locks. A new version is
swapped in only after it has loaded and answered a warm-up request; under the ``latest`` policy the
previous version is unloaded only then (availability first, as TF Serving does), so no request sees
a gap. A SavedModel's ``assets.extra/tf_serving_warmup_requests`` are replayed before it is
AVAILABLE (``serving.warmup``). A version that fails to load is reported with state END and its
error, and is retried only if its directory changes. Requests already holding an unloading version
finish on it.

Version states follow TF Serving's ``ModelVersionStatus.State``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from serving.batching import NO_BATCHING, Batcher, BatchingOptions, InFlight
from serving.metrics import ServingMetrics
from serving.servables import LoadError, Servable, load_servable
from serving.signatures import Signature
from serving.status import OK, UNAVAILABLE, UNKNOWN, ServingError, invalid, not_found
from serving.tensors import MAX_TENSOR_ELEMENTS
from serving.versions import (
    LABELS_FILE,
    LabelsError,
    VersionPolicy,
    fingerprint,
    read_labels,
    scan_versions,
    validate_model_name,
)

log = logging.getLogger("eventpipe.serving")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error_code: str = OK
    error_message: str = ""


class LoadedVersion:
    """One serving version: its servable and (when batching is on) a batcher per signature."""

    def __init__(
        self,
        model_name: str,
        version: int,
        servable: Servable,
        batching: BatchingOptions,
        in_flight: InFlight,
        metrics: ServingMetrics | None,
        max_tensor_elements: int = MAX_TENSOR_ELEMENTS,
    ) -> None:
        self.max_tensor_elements = max_tensor_elements
        self.model_name = model_name
        self.version = version
        self.servable = servable
        self.platform = servable.platform
        self._batching = batching
        self._in_flight = in_flight
        self._metrics = metrics
        self._batchers: dict[str, Batcher] = {}
        self._lock = threading.Lock()
        self._closed = False

    def signature(self, name: str) -> Signature:
        return self.servable.signature(name)

    def _batcher(self, signature: Signature) -> Batcher | None:
        if not self._batching.enabled or self._closed or not self.servable.batchable:
            return None
        batcher = self._batchers.get(signature.name)
        if batcher is None:
            with self._lock:
                batcher = self._batchers.get(signature.name)
                if batcher is None and not self._closed:
                    all_outputs = sorted(signature.outputs)
                    metrics = self._metrics
                    labels = (self.model_name, str(self.version), signature.name)

                    def on_batch(rows: int, requests: int) -> None:
                        if metrics is not None:
                            metrics.batch_size.labels(*labels).observe(rows)
                            metrics.batched_requests.labels(self.model_name).observe(requests)

                    batcher = Batcher(
                        lambda arrays: self.servable.run_validated(signature, arrays, all_outputs),
                        self._batching.max_batch_size,
                        self._batching.batch_timeout_s,
                        self._in_flight,
                        on_batch,
                        self._batching.threads,
                    )
                    self._batchers[signature.name] = batcher
        return batcher

    def predict(
        self, signature: Signature, inputs: dict[str, np.ndarray], outputs: list[str]
    ) -> dict[str, np.ndarray]:
        """Validated inputs -> the requested outputs, through the batcher when batching is on."""
        rows = signature.check_inputs(inputs)
        inputs = signature.padded_inputs(inputs, self.max_tensor_elements)
        batcher = self._batcher(signature)
        if batcher is None:
            result = self.servable.run(signature, inputs, outputs)
            if self._metrics is not None:
                self._metrics.batch_size.labels(self.model_name, str(self.version), signature.name).observe(
                    rows
                )
            return result
        self.servable.validate(signature, inputs)  # in this thread, beside the running batch
        result = batcher.submit(inputs, rows)
        return {k: result[k] for k in outputs}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            batchers, self._batchers = list(self._batchers.values()), {}
        for b in batchers:
            b.close()


class ModelManager:
    """Loads, swaps and unloads the versions of one model under its base path.

    ``poll_seconds`` 0 polls the base path once, at start (TF Serving's
    ``--file_system_poll_wait_seconds=0``). ``labels``: fixed version labels (a config file's);
    None reads ``labels_path`` (default ``<base_path>/labels.json``) on every poll.
    ``in_flight`` counts this model's predict requests from the moment the front end knows the
    model name (before the body is parsed): the batcher's "nobody else is coming" test.
    """

    def __init__(
        self,
        base_path: str,
        model_name: str,
        policy: VersionPolicy,
        *,
        poll_seconds: float = 1.0,
        labels_path: str | None = None,
        labels: dict[str, int] | None = None,
        batching: BatchingOptions = NO_BATCHING,
        prefer_tflite: bool = False,
        metrics: ServingMetrics | None = None,
        max_tensor_elements: int = MAX_TENSOR_ELEMENTS,
    ) -> None:
        self.model_name = validate_model_name(model_name)
        self.directory = os.path.abspath(base_path)
        self.policy = policy
        self.poll_seconds = poll_seconds
        self.labels_path = labels_path or os.path.join(self.directory, LABELS_FILE)
        self._fixed_labels = labels
        self.batching = batching
        self.prefer_tflite = prefer_tflite
        self.metrics = metrics
        self.in_flight = InFlight()
        self.max_tensor_elements = max_tensor_elements
        self._serving: dict[int, LoadedVersion] = {}  # immutable snapshot, replaced on change
        self._status: dict[int, VersionStatus] = {}
        self._failed_fingerprints: dict[int, tuple] = {}
        self._labels: dict[str, int] = {}
        self._labels_error = ""
        self._lock = threading.RLock()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        self._pending: set[int] = set()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._changed = threading.Condition(self._lock)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.poll()
        self._poller = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        self._loader.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            serving, self._serving = self._serving, {}
        for lv in serving.values():
            lv.close()

    def _poll_loop(self) -> None:
        if self.poll_seconds <= 0:
            return  # polled once, at start
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001  (a bad poll must not kill the poller)
                log.exception("polling %s failed", self.directory)

    def reconfigure(self, policy: VersionPolicy, labels: dict[str, int] | None) -> None:
        """Apply a reloaded config's policy and labels (the base path stays: a new one is a new model)."""
        with self._lock:
            self.policy, self._fixed_labels = policy, labels
        self.poll()

    # -- reconciliation ------------------------------------------------------------------
    def poll(self) -> None:
        """Compare disk with what is loaded; schedule loads and unloads."""
        on_disk = scan_versions(self.directory)
        aspired = self.policy.aspired(sorted(on_disk))
        self._reload_labels()
        with self._lock:
            for version in sorted(aspired, reverse=True):
                if version in self._pending or version in self._serving:
                    continue
                status = self._status.get(version)
                if status is not None and status.state == END and status.error_code != OK:
                    if fingerprint(on_disk[version]) == self._failed_fingerprints.get(version):
                        continue  # failed before and unchanged since: do not retry
                self._pending.add(version)
                self._set_status(VersionStatus(version, START))
                self._loader.submit(self._load, version, on_disk[version])
            doomed = self._unload_unwanted(on_disk, aspired)
        self._finish_unload(doomed)

    def _unload_unwanted(self, on_disk: dict[int, str], aspired: set[int]) -> list[LoadedVersion]:
        """Drop versions the policy no longer wants from the snapshot (caller holds the lock).

        Returns them; the caller closes them outside the lock with ``_finish_unload``.
        """
        serving = self._serving
        aspired_serving = aspired & set(serving)
        doomed = [
            v
            for v in serving
            if v not in on_disk or (v not in aspired and (aspired_serving or self.policy.kind != "latest"))
        ]
        if not doomed:
            return []
        self._serving = {v: lv for v, lv in serving.items() if v not in doomed}
        for v in doomed:
            self._set_status(VersionStatus(v, UNLOADING))
            if self.metrics is not None:
                self.metrics.set_available(self.model_name, v, serving[v].platform, False)
        self._changed.notify_all()
        return [serving[v] for v in doomed]

    def _finish_unload(self, versions: list[LoadedVersion]) -> None:
        for lv in versions:
            log.info("unloading %s version %d", self.model_name, lv.version)
            lv.close()  # drains its batchers; requests holding it still finish
            self._set_status(VersionStatus(lv.version, END))

    def _load(self, version: int, path: str) -> None:
        self._set_status(VersionStatus(version, LOADING))
        started = time.monotonic()
        files = fingerprint(path)  # taken before loading: files written meanwhile trigger a retry
        try:
            servable = load_servable(path, self.prefer_tflite, self.max_tensor_elements)
        except Exception as e:  # noqa: BLE001  (any failure goes into the version's status)
            message = str(e) if isinstance(e, LoadError) else f"{type(e).__name__}: {e}"
            log.error("loading %s version %d from %s failed: %s", self.model_name, version, path, message)
            with self._lock:
                self._failed_fingerprints[version] = files
                self._set_status(VersionStatus(version, END, UNKNOWN, message))
                self._pending.discard(version)
                self._changed.notify_all()
            if self.metrics is not None:
                self.metrics.observe_load(self.model_name, path, ok=False)
            return
        loaded = LoadedVersion(
            self.model_name,
            version,
            servable,
            self.batching,
            self.in_flight,
            self.metrics,
            self.max_tensor_elements,
        )
        with self._lock:
            self._serving = {**self._serving, version: loaded}
            self._failed_fingerprints.pop(version, None)
            self._set_status(VersionStatus(version, AVAILABLE))
            self._pending.discard(version)
            on_disk = scan_versions(self.directory)
            doomed = self._unload_unwanted(on_disk, self.policy.aspired(sorted(on_disk)))
            self._changed.notify_all()
        self._finish_unload(doomed)
        if self.metrics is not None:
            self.metrics.observe_load(self.model_name, path, ok=True)
            self.metrics.set_available(self.model_name, version, servable.platform, True)
        log.info(
            "%s version %d available (%s on %s, loaded in %.1fs, %d warm-up records replayed)",
            self.model_name,
            version,
            servable.platform,
            servable.runtime or "?",
            time.monotonic() - started,
            servable.warmup_records,
        )

    def _set_status(self, status: VersionStatus) -> None:
        with self._lock:
            self._status[status.version] = status

    def _reload_labels(self) -> None:
        if self._fixed_labels is not None:
            self._labels = dict(self._fixed_labels)
            return
        try:
            labels = read_labels(self.labels_path)
        except LabelsError as e:
            if str(e) != self._labels_error:
                log.error("version labels not updated: %s", e)
            self._labels_error = str(e)
            return
        self._labels_error = ""
        if labels != self._labels:
            log.info("version labels: %s", labels)
            self._labels = labels

    # -- queries (request threads) -------------------------------------------------------
    @property
    def labels(self) -> dict[str, int]:
        return dict(self._labels)

    def serving_versions(self) -> list[int]:
        return sorted(self._serving)

    def _label_version(self, label: str) -> int:
        version = self._labels.get(label)
        if version is None:
            raise invalid(f"Unrecognized servable version label: {label}")
        return version

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The serving version a request addresses (latest when neither version nor label)."""
        if version is not None and label:
            raise invalid(
                f"Both model version ({version}) and model version label ({label}) cannot be supplied."
            )
        if label:
            version = self._label_version(label) if name == self.model_name else None
        serving = self._serving
        if name != self.model_name:
            what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise not_found(f"Servable not found for request: {what}")
        if version is not None:
            lv = serving.get(version)
            if lv is None:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return lv
        if not serving:
            raise ServingError(
                UNAVAILABLE,
                f"Servable not found for request: Latest({name}): no version of model {name} is "
                f"available yet (see GET /v1/models/{name} for loading state and errors)",
            )
        return serving[max(serving)]

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """TF Serving's GetModelStatus: one version, or every version known (newest first)."""
        if version is not None and label:
            raise invalid(
                f"Both model version ({version}) and model version label ({label}) cannot be supplied."
            )
        if name != self.model_name:
            raise not_found(f"Could not find any versions of model {name}")
        if label:
            version = self._label_version(label)
        with self._lock:
            statuses = dict(self._status)
        if version is not None:
            if version not in statuses:
                raise not_found(f"Could not find version {version} of model {name}")
            return [statuses[version]]
        if not statuses:
            raise not_found(f"Could not find any versions of model {name}")
        return [statuses[v] for v in sorted(statuses, reverse=True)]

    def wait_for(self, predicate, timeout: float) -> bool:
        """Block until ``predicate(manager)`` holds (re-checked on every load/unload)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.5))
        return True
