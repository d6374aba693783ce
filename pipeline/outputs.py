"""Find what a pipeline run produced, by asking ML Metadata (not by guessing paths)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from contract.errors import UserError
from pipeline.pipeline_def import PIPELINE_NAME


@dataclass
class NodeOutputs:
    state: str  # COMPLETE | CACHED | FAILED | RUNNING | ...
    execution_id: int
    uris: dict[str, list[str]] = field(default_factory=dict)  # output key -> artifact URIs
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)  # uri -> custom properties


def open_store(connection_config: Any) -> Any:
    """A MetadataStore, or one UserError naming the store when it cannot be reached."""

    try:
        return metadata_store.MetadataStore(connection_config)
    except RuntimeError as e:
        if connection_config.HasField("mysql"):
            m = connection_config.mysql
            where = f"MySQL ML Metadata at {m.host}:{m.port}/{m.database} as user {m.user or '(none)'}"
            hint = (
                "start the server, check --metadata mysql://user:password@host:port/db and the user's rights"
            )
        else:
            where = f"SQLite ML Metadata at {connection_config.sqlite.filename_uri}"
            hint = "check that --workdir is writable"
        raise UserError(f"cannot open {where} ({str(e).strip() or type(e).__name__}): {hint}") from None


def last_run_id(connection_config: Any) -> int:
    """Id of the newest pipeline-run context (0 if none): taken before a run to spot a new one."""
    store = open_store(connection_config)
    return max((c.id for c in store.get_contexts_by_type("pipeline_run")), default=0)


def newest_run(connection_config: Any) -> dict[str, Any]:
    """The newest pipeline run's ML Metadata context: ``{"context_id", "run_id"}`` (TFX's run id)."""
    store = open_store(connection_config)
    runs = store.get_contexts_by_type("pipeline_run")
    if not runs:
        return {}
    newest = max(runs, key=lambda c: c.id)
    return {"context_id": newest.id, "run_id": newest.name}


def latest_run(
    connection_config: Any, pipeline_name: str = PIPELINE_NAME, newer_than: int = 0
) -> dict[str, NodeOutputs]:
    """Component id -> outputs of its execution in the most recent pipeline run.

    Empty when no run newer than context id ``newer_than`` exists (the run never started).
    """

    store = open_store(connection_config)
    runs = [c for c in store.get_contexts_by_type("pipeline_run") if c.id > newer_than]
    node_contexts = {
        c.name.split(".", 1)[1]: c
        for c in store.get_contexts_by_type("node")
        if c.name.startswith(pipeline_name + ".")
    }
    if not runs:
        return {}
    run_ctx = max(runs, key=lambda c: c.id)
    in_run = {e.id: e for e in store.get_executions_by_context(run_ctx.id)}
    result: dict[str, NodeOutputs] = {}
    for node_id, ctx in node_contexts.items():
        executions = [e for e in store.get_executions_by_context(ctx.id) if e.id in in_run]
        if not executions:
            continue
        execution = max(executions, key=lambda e: e.id)
        state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        outputs = NodeOutputs(state=state, execution_id=execution.id)
        events = [
            ev
            for ev in store.get_events_by_execution_ids([execution.id])
            if ev.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
        ]
        artifacts = {a.id: a for a in store.get_artifacts_by_id([ev.artifact_id for ev in events])}
        for ev in events:
            key = ev.path.steps[0].key if ev.path.steps else ""
            artifact = artifacts[ev.artifact_id]
            outputs.uris.setdefault(key, []).append(artifact.uri)
            outputs.properties[artifact.uri] = {k: _value(v) for k, v in artifact.custom_properties.items()}
        result[node_id] = outputs
    return result


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def execution_count(
    connection_config: Any, node_id: str, pipeline_name: str = PIPELINE_NAME
) -> dict[str, int]:
    """How many executions of one node ended in each state (COMPLETE, CACHED, ...)."""

    store = open_store(connection_config)
    ctx = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node_id}")
    counts: dict[str, int] = {}
    if ctx is None:
        return counts
    for e in store.get_executions_by_context(ctx.id):
        name = metadata_store_pb2.Execution.State.Name(e.last_known_state)
        counts[name] = counts.get(name, 0) + 1
    return counts
