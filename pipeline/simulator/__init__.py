"""Event simulator: realistic, seeded camera events as JSONL manifests + PNG frames.

``generate(out_dir, SimulatorConfig(...))`` is the Python API (used by tests to make small
data sets); ``eventpipe generate`` is the command (pipeline/simulator/cli.py).
"""

from pipeline.simulator.writer import generate, manifest_name, shard_bounds

__all__ = ["generate", "manifest_name", "shard_bounds"]
