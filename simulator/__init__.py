"""Event simulator: realistic, seeded camera events as JSONL manifests + PNG frames.

``generate(out_dir, SimulatorConfig(...))`` is the Python API (used by tests to make small
data sets); ``eventpipe generate`` is the command (simulator/cli.py).
"""

from typing import Any

__all__ = ["generate", "manifest_name", "shard_bounds"]


def __getattr__(name: str) -> Any:
    # The writer (tqdm, PIL, NumPy) loads on first use: every `eventpipe` command, device-run
    # included, imports this package to register `generate`, and must not pay for it.
    if name in __all__:
        from simulator import writer

        return getattr(writer, name)
    raise AttributeError(f"module 'simulator' has no attribute {name!r}")
