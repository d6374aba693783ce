"""Where a pipeline run's time went: each component's start and duration, from ML Metadata.

    .venv/bin/python benchmarks/stage_times.py demo/work        # the latest run in that workdir

Reads ``<workdir>/metadata.sqlite`` (what ``eventpipe run`` records anyway), so it costs nothing
to measure and works on any past run. Cached components show as CACHED with their lookup time.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ml_metadata.proto import metadata_store_pb2  # noqa: E402

from contract import tfenv  # noqa: E402,F401
from contract.config import Config  # noqa: E402
from pipeline import outputs, runners  # noqa: E402


def stage_times(workdir: str) -> list[tuple[str, str, float, float]]:
    """(component, state, start offset s, duration s) of the latest run, in start order."""
    cfg = Config()
    cfg.run.workdir = workdir
    connection = runners.metadata_connection(cfg)
    store = outputs.open_store(connection)
    latest = outputs.latest_run(connection)
    executions = store.get_executions_by_id([o.execution_id for o in latest.values()])
    by_id = {e.id: e for e in executions}
    rows = []
    for node, out in latest.items():
        e = by_id[out.execution_id]
        rows.append((node, metadata_store_pb2.Execution.State.Name(e.last_known_state),
                     e.create_time_since_epoch / 1000,
                     (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000))  # fmt: skip
    if not rows:
        return []
    t0 = min(r[2] for r in rows)
    return sorted(((n, s, start - t0, took) for n, s, start, took in rows), key=lambda r: r[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="the --workdir of an eventpipe run")
    args = parser.parse_args()
    rows = stage_times(os.path.abspath(args.workdir))
    if not rows:
        print(f"no pipeline run recorded in {args.workdir}", file=sys.stderr)
        return 1
    print(f"{'component':22s} {'state':9s} {'starts':>8s} {'takes':>8s}")
    for node, state, start, took in rows:
        print(f"{node:22s} {state:9s} {start:7.1f}s {took:7.1f}s")
    end = max(start + took for _, _, start, took in rows)
    print(f"{'first start to last end':32s} {end:7.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
