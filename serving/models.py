"""Every model one server serves, routed by name (``model_spec.name``, ``/v1/models/<name>``).

One ``ModelManager`` per model. The set comes from ``--model_name``/``--model_base_path`` (one
model) or a ``--model_config_file`` that is re-read every
``--model_config_file_poll_wait_seconds`` (and on gRPC ``HandleReloadConfigRequest``): models
added start loading, models removed are unloaded, a changed base path reloads the model, a
changed policy or labels apply in place. A config that does not parse keeps the current one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from serving.config_files import ServedModel, read_model_config_file
from serving.manager import LoadedVersion, ModelManager, VersionStatus
from serving.status import not_found

log = logging.getLogger("eventpipe.serving")

ManagerFactory = Callable[[ServedModel], ModelManager]


class ModelRegistry:
    """The request threads' entry point: ``get``, ``resolve`` and ``status`` by model name."""

    def __init__(
        self,
        models: list[ServedModel],
        make_manager: ManagerFactory,
        *,
        config_file: str = "",
        config_poll_seconds: float = 0.0,
    ) -> None:
        self._make = make_manager
        self._config_file = config_file
        self._config_poll_seconds = config_poll_seconds
        self._served: dict[str, ServedModel] = {}
        self._managers: dict[str, ModelManager] = {}  # immutable snapshot, replaced on change
        self._lock = threading.Lock()  # the snapshot
        self._apply_lock = threading.Lock()  # one reconfiguration at a time (poller, gRPC reload)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._started = False
        self._pending = models

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        self.apply(self._pending)
        if self._config_file and self._config_poll_seconds > 0:
            self._poller = threading.Thread(target=self._poll_config, name="model-config-poller", daemon=True)
            self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10)
        with self._lock:
            managers, self._managers = list(self._managers.values()), {}
        for m in managers:
            m.stop()

    def _poll_config(self) -> None:
        while not self._stop.wait(self._config_poll_seconds):
            try:
                self.apply(read_model_config_file(self._config_file))
            except Exception as e:  # noqa: BLE001  (a bad edit must not take the served models down)
                log.error("model config not reloaded, keeping the current one: %s", e)

    def apply(self, models: list[ServedModel]) -> None:
        """Serve exactly ``models``: start new ones, stop removed ones, update changed ones."""
        with self._apply_lock:
            if not self._started:
                self._pending = models
                return
            self._apply(models)

    def _apply(self, models: list[ServedModel]) -> None:
        wanted = {m.name: m for m in models}
        started, stopped = [], []
        with self._lock:
            managers = dict(self._managers)
            for name, served in wanted.items():
                old = self._served.get(name)
                if old == served:
                    continue
                if old is not None and old.base_path == served.base_path:
                    managers[name].reconfigure(served.policy, served.labels)
                    log.info("model %s: policy %s, labels %s", name, served.policy, served.labels)
                    continue
                if old is not None:
                    stopped.append(managers.pop(name))
                managers[name] = self._make(served)
                started.append(managers[name])
            for name in set(managers) - set(wanted):
                stopped.append(managers.pop(name))
            self._managers, self._served = managers, wanted
        for m in stopped:
            log.info("model %s removed from the config: unloading it", m.model_name)
            m.stop()
        for m in started:
            log.info("serving model %s from %s (policy %s)", m.model_name, m.directory, m.policy)
            m.start()

    # -- queries (request threads) -------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return sorted(self._managers)

    @property
    def served(self) -> list[ServedModel]:
        return list(self._served.values())

    def manager(self, name: str) -> ModelManager | None:
        return self._managers.get(name)

    def get(self, name: str, version: int | None = None) -> ModelManager:
        """The model a request names; NOT_FOUND as TF Serving words it for an unknown one."""
        manager = self._managers.get(name)
        if manager is None:
            what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise not_found(f"Servable not found for request: {what}")
        return manager

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        return self.get(name, version).resolve(name, version, label)

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        manager = self._managers.get(name)
        if manager is None:
            raise not_found(f"Could not find any versions of model {name}")
        return manager.status(name, version, label)
