"""Event simulator: realistic, seeded camera events as JSONL manifests + PNG frames.

``generate(out_dir, SimulatorConfig(...))`` is the Python API (used by tests to make small
data sets); ``eventpipe generate`` is the command (simulator/cli.py).
"""

from simulator.writer import generate, manifest_name, shard_bounds

__all__ = ["generate", "manifest_name", "shard_bounds"]
