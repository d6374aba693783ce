"""Teacher training throughput per strategy against the machine's fp32 matmul ceiling.

1. The ceiling: fp32 ``tf.matmul`` of two square matrices in a loop, FLOP/s = 2 n^3 / time,
   in a fresh process using every core (what TensorFlow can reach on this machine).
2. Per strategy (single, mirrored, hybrid 2d, hybrid 1d, multiworker with two local
   workers): ``eventpipe train`` in its own process(es) on the same synthetic events, with
   the default teacher architecture; the median step time after warm-up gives events/s.
   Achieved FLOP/s = events/s x training FLOPs per event (3 x the profiled forward pass),
   so redundant work (the 2d mesh repeats the convolutions on every model-axis device)
   counts as waste, not as achievement.
3. Input rate vs step rate: the training input pipeline (``trainer.data``: parallel
   PNG decode, prefetch) alone in a fresh process, events/s and CPU per event, against each
   strategy's training events/s; and, inside every training run, the share of the loop
   spent waiting for the next batch. A headroom well above 1x and a wait share near 0 mean
   the trainer is compute-bound, not input-bound.
4. Step time of each multi-device strategy relative to ``single`` on the same cores: on a
   CPU split into logical devices the devices share the physical cores, so this measures
   the overhead of the parallel plan (communication, sharding, redundant compute), not a
   speed-up from more hardware. CPU seconds per step (all threads of all processes) are
   printed next to it: on a shared, busy machine they compare plans more fairly than wall
   time, which favours plans that run more processes.

    .venv/bin/python benchmarks/bench_train.py                 # ~3-5 minutes on 2 cores
    .venv/bin/python benchmarks/bench_train.py --steps 8 --strategies single,hybrid-1d

Writes ``benchmarks/results/bench_train.json`` (or ``--out``). The machine may be shared:
the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from contract import tfenv  # noqa: E402,F401

# The measured stack (TensorFlow, TFX, the pipeline's modules) is imported inside the functions
# that run in a measurement's own process, so the orchestrating process stays small and its
# start-up is not counted in any figure.

# Config overrides per strategy; everything else is the default teacher.
STRATEGIES = {
    "single": {"strategy": "single"},
    "mirrored": {"strategy": "mirrored"},
    "hybrid-2d": {"strategy": "hybrid", "fc_layout": "2d", "mesh": "batch=2,model=2"},
    "hybrid-1d": {"strategy": "hybrid", "fc_layout": "1d", "mesh": "batch=2,model=2"},
    "multiworker": {"strategy": "multiworker", "workers": 2},
}

MATMUL_PROBE = """
import time, json, sys
from contract import tfenv
import tensorflow as tf
n, reps = int(sys.argv[1]), int(sys.argv[2])
a = tf.random.normal([n, n]); b = tf.random.normal([n, n])
@tf.function
def run(a, b):
    c = a
    for _ in range(reps):
        c = tf.matmul(c, b) * 1e-3
    return c
run(a, b).numpy()
best = float("inf")
for _ in range(5):
    t = time.perf_counter(); run(a, b).numpy(); best = min(best, time.perf_counter() - t)
print(json.dumps({"n": n, "flops_per_second": 2 * n**3 * reps / best}))
"""


INPUT_PROBE = """
import json, os, sys, time
from contract import tfenv
from contract import layout
from contract.layout import EventSpec
from trainer import data as train_data

data, batch, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec = EventSpec.load(data)
files = layout.split_files(data, layout.TRAIN, required=True)
it = iter(
    train_data.train_batches(
        files, spec, batch_size=batch, seed=0, epoch_size=train_data.count_records(files)
    )
)
for _ in range(3):
    next(it)
t, c = time.perf_counter(), time.process_time()
for _ in range(batches):
    next(it)
wall, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps({
    "events_per_second": batch * batches / wall,
    "cpu_seconds_per_event": cpu / (batch * batches),
}))
"""


def input_rate(data: str, batch: int, batches: int = 60) -> dict:
    """The teacher's input pipeline alone: decoded events/s and CPU seconds per event."""
    out = subprocess.run([sys.executable, "-c", INPUT_PROBE, data, str(batch), str(batches)], cwd=ROOT,
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def matmul_ceiling(n: int = 1024, reps: int = 8) -> dict:
    out = subprocess.run([sys.executable, "-c", MATMUL_PROBE, str(n), str(reps)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def flops_per_event(spec_dir: str) -> dict:
    from contract.config import TeacherConfig
    from contract.layout import EventSpec
    from trainer.lite.measure import keras_flops_per_event
    from trainer.models.teacher import build_teacher, parameter_counts

    spec = EventSpec.load(spec_dir)
    model = build_teacher(spec, TeacherConfig())
    forward = keras_flops_per_event(model, spec.input_shape)
    # A training step is about three forward passes: the backward pass computes two products
    # (gradients for inputs and for weights) per forward product.
    return {"forward": forward, "training": 3 * forward, "parameters": parameter_counts(model)}


def run_strategy(name: str, data: str, workdir: str, steps: int, batch: int) -> dict:
    """Train in fresh process(es) through the pipeline's launcher (multiworker: local workers)."""
    from contract.config import Config
    from trainer.parallel import launch

    cfg = Config()
    for key, value in {**STRATEGIES[name], "steps": steps, "global_batch_size": batch,
                       "checkpoint_every": 10 * steps, "eval_batches": 1}.items():  # fmt: skip
        setattr(cfg.teacher, key, value)
    try:
        report = launch.train(cfg, data, workdir, log=lambda line: None)
    except Exception as e:  # noqa: BLE001 - one strategy failing ends the benchmark with its reason
        raise SystemExit(f"{name} failed: {e}") from e
    workers = report["mesh"].get("workers", 1)
    return {
        "median_step_seconds": report["timing"]["median_step_seconds"],
        # CPU seconds of all processes per step: what the plan costs, whatever else runs.
        "median_step_cpu_seconds": report["timing"]["median_step_cpu_seconds"] * workers,
        "first_step_seconds": report["timing"]["first_step_seconds"],
        "events_per_second": report["timing"]["examples_per_second"],
        "input_wait_fraction": report["timing"]["input_wait_fraction"],
        "mesh": report["mesh"],
        "processes": workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="steps per strategy (the first 3 are warm-up)")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_train.json"))
    args = parser.parse_args()
    names = [s for s in args.strategies.split(",") if s]
    unknown = set(names) - set(STRATEGIES)
    if unknown:
        raise SystemExit(f"unknown strategies {sorted(unknown)}; choose from {', '.join(STRATEGIES)}")

    from fixtures.teacher_data import write_examples

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        data = os.path.join(tmp, "examples")
        write_examples(data, train=max(256, 4 * args.batch), eval=args.batch, frames=4, size=32, seed=0)
        print("measuring the fp32 matmul ceiling ...", flush=True)
        ceiling = matmul_ceiling()
        work = flops_per_event(data)
        print("measuring the input pipeline alone ...", flush=True)
        feed = input_rate(data, args.batch)
        results = {}
        for name in names:
            print(f"training {name} for {args.steps} steps ...", flush=True)
            r = run_strategy(name, data, os.path.join(tmp, name), args.steps, args.batch)
            r["achieved_flops_per_second"] = r["events_per_second"] * work["training"]
            r["fraction_of_ceiling"] = r["achieved_flops_per_second"] / ceiling["flops_per_second"]
            r["input_headroom"] = feed["events_per_second"] / r["events_per_second"]
            results[name] = r
    if "single" in results:
        for r in results.values():
            r["step_time_vs_single"] = r["median_step_seconds"] / results["single"]["median_step_seconds"]
            r["step_cpu_vs_single"] = (
                r["median_step_cpu_seconds"] / results["single"]["median_step_cpu_seconds"]
            )

    load = os.getloadavg()
    print(f"\nfp32 matmul ceiling: {ceiling['flops_per_second'] / 1e9:.1f} GFLOP/s ({os.cpu_count()} cores, "
          f"n={ceiling['n']}); teacher: {work['training'] / 1e9:.3f} GFLOP per training event, "
          f"{work['parameters']['total'] / 1e6:.2f} M parameters "
          f"({work['parameters']['fully_connected'] / 1e6:.2f} M in FC)")  # fmt: skip
    print(f"{'strategy':<12} {'mesh':<22} {'step s':>7} {'events/s':>9} {'GFLOP/s':>8} {'of ceiling':>10} "
          f"{'step vs single':>14} {'CPU-s/step':>10} {'CPU vs single':>13}")  # fmt: skip
    for name, r in results.items():
        mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items())
        vs = f"{r['step_time_vs_single']:.2f}x" if "step_time_vs_single" in r else "-"
        cpu_vs = f"{r['step_cpu_vs_single']:.2f}x" if "step_cpu_vs_single" in r else "-"
        print(f"{name:<12} {mesh:<22} {r['median_step_seconds']:>7.3f} {r['events_per_second']:>9.1f} "
              f"{r['achieved_flops_per_second'] / 1e9:>8.2f} {r['fraction_of_ceiling']:>10.1%} {vs:>14} "
              f"{r['median_step_cpu_seconds']:>10.3f} {cpu_vs:>13}")  # fmt: skip
    print(
        f"\ninput pipeline alone: {feed['events_per_second']:.0f} events/s, "
        f"{feed['cpu_seconds_per_event'] * 1e3:.2f} CPU-ms/event (parallel PNG decode + prefetch)"
    )
    print(
        f"{'strategy':<12} {'train events/s':>14} {'input headroom':>14} {'waiting for input':>17}  verdict"
    )
    for name, r in results.items():
        wait = r["input_wait_fraction"] or 0.0
        verdict = "compute-bound" if r["input_headroom"] > 1.5 and wait < 0.05 else "INPUT-BOUND"
        print(
            f"{name:<12} {r['events_per_second']:>14.1f} {r['input_headroom']:>13.1f}x "
            f"{wait:>17.1%}  {verdict}"
        )
    if load[0] > (os.cpu_count() or 1):
        print("note: the machine is busier than its cores; "
              "separate processes (multiworker) get a larger share "
              "of a contended CPU, so compare CPU-s/step rather than wall time")  # fmt: skip
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; total {time.time() - started:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"ceiling": ceiling, "flops_per_event": work, "batch": args.batch, "steps": args.steps,
                   "input_pipeline": feed, "strategies": results, "load_average": load},
                  f, indent=2)  # fmt: skip
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
