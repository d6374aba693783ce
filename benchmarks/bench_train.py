"""Teacher training throughput per strategy against the machine's fp32 matmul ceiling.

1. The ceiling: fp32 ``tf.matmul`` of two square matrices in a loop, FLOP/s = 2 n^3 / time,
   in a fresh process using every core (what TensorFlow can reach on this machine).
2. Per strategy (single, mirrored, hybrid 2d, hybrid 1d, multiworker with two local
   workers): ``eventpipe train`` in its own process(es) on the same synthetic events, with
   the default teacher architecture; the median step time after warm-up gives events/s.
   Achieved FLOP/s = events/s x training FLOPs per event (3 x the profiled forward pass),
   so redundant work (the 2d mesh repeats the convolutions on every model-axis device)
   counts as waste, not as achievement.
3. Step time of each multi-device strategy relative to ``single`` on the same cores: on a
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
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from pipeline import tfenv  # noqa: E402,F401

STRATEGIES = {
    "single": ["--strategy", "single"],
    "mirrored": ["--strategy", "mirrored"],
    "hybrid-2d": ["--strategy", "hybrid", "--fc-layout", "2d", "--mesh", "batch=2,model=2"],
    "hybrid-1d": ["--strategy", "hybrid", "--fc-layout", "1d", "--mesh", "batch=2,model=2"],
    "multiworker": ["--strategy", "multiworker", "--logical-devices", "1"],
}

MATMUL_PROBE = """
import time, json, sys
from pipeline import tfenv
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


def matmul_ceiling(n: int = 1024, reps: int = 8) -> dict:
    out = subprocess.run([sys.executable, "-c", MATMUL_PROBE, str(n), str(reps)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def flops_per_event(spec_dir: str) -> dict:
    from pipeline.config import TeacherConfig
    from pipeline.layout import EventSpec
    from trainer.flops import forward_flops_per_event
    from trainer.teacher_model import build_teacher, parameter_counts

    spec = EventSpec.load(spec_dir)
    model = build_teacher(spec, TeacherConfig())
    forward = forward_flops_per_event(model, spec.input_shape)
    return {"forward": forward, "training": 3 * forward, "parameters": parameter_counts(model)}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_strategy(name: str, data: str, workdir: str, steps: int, batch: int) -> dict:
    base = [sys.executable, "-m", "pipeline.cli", "train", "--data", data, "--steps", str(steps),
            "--global-batch-size", str(batch), "--checkpoint-every", str(10 * steps), "--no-export", "--quiet",
            "--set", "teacher.eval_batches=1"]  # fmt: skip
    workers = 2 if name == "multiworker" else 1
    ports = _free_ports(workers)
    procs = []
    for i in range(workers):
        env = dict(os.environ)
        if name == "multiworker":
            cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
            env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen([*base, "--workdir", workdir, *STRATEGIES[name]], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"{name} failed:\n{out[-3000:]}")
    with open(os.path.join(workdir, "train_report.json"), encoding="utf-8") as f:
        report = json.load(f)
    return {
        "median_step_seconds": report["timing"]["median_step_seconds"],
        # CPU seconds of all processes per step: what the plan costs, whatever else runs.
        "median_step_cpu_seconds": report["timing"]["median_step_cpu_seconds"] * workers,
        "first_step_seconds": report["timing"]["first_step_seconds"],
        "events_per_second": report["timing"]["examples_per_second"],
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

    from teacher_data import write_examples

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        data = os.path.join(tmp, "examples")
        write_examples(data, train=max(256, 4 * args.batch), eval=args.batch, frames=4, size=32, seed=0)
        print("measuring the fp32 matmul ceiling ...", flush=True)
        ceiling = matmul_ceiling()
        work = flops_per_event(data)
        results = {}
        for name in names:
            print(f"training {name} for {args.steps} steps ...", flush=True)
            r = run_strategy(name, data, os.path.join(tmp, name), args.steps, args.batch)
            r["achieved_flops_per_second"] = r["events_per_second"] * work["training"]
            r["fraction_of_ceiling"] = r["achieved_flops_per_second"] / ceiling["flops_per_second"]
            results[name] = r
    if "single" in results:
        for r in results.values():
            r["step_time_vs_single"] = r["median_step_seconds"] / results["single"]["median_step_seconds"]
            r["step_cpu_vs_single"] = r["median_step_cpu_seconds"] / results["single"]["median_step_cpu_seconds"]

    load = os.getloadavg()
    print(f"\nfp32 matmul ceiling: {ceiling['flops_per_second'] / 1e9:.1f} GFLOP/s ({os.cpu_count()} cores, "
          f"n={ceiling['n']}); teacher: {work['training'] / 1e9:.3f} GFLOP per training event, "
          f"{work['parameters']['total'] / 1e6:.2f} M parameters ({work['parameters']['fully_connected'] / 1e6:.2f} M in FC)")  # fmt: skip
    print(f"{'strategy':<12} {'mesh':<22} {'step s':>7} {'events/s':>9} {'GFLOP/s':>8} {'of ceiling':>10} "
          f"{'step vs single':>14} {'CPU-s/step':>10} {'CPU vs single':>13}")  # fmt: skip
    for name, r in results.items():
        mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items())
        vs = f"{r['step_time_vs_single']:.2f}x" if "step_time_vs_single" in r else "-"
        cpu_vs = f"{r['step_cpu_vs_single']:.2f}x" if "step_cpu_vs_single" in r else "-"
        print(f"{name:<12} {mesh:<22} {r['median_step_seconds']:>7.3f} {r['events_per_second']:>9.1f} "
              f"{r['achieved_flops_per_second'] / 1e9:>8.2f} {r['fraction_of_ceiling']:>10.1%} {vs:>14} "
              f"{r['median_step_cpu_seconds']:>10.3f} {cpu_vs:>13}")  # fmt: skip
    if load[0] > (os.cpu_count() or 1):
        print("note: the machine is busier than its cores; separate processes (multiworker) get a larger share "
              "of a contended CPU, so compare CPU-s/step rather than wall time")  # fmt: skip
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; total {time.time() - started:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"ceiling": ceiling, "flops_per_event": work, "batch": args.batch, "steps": args.steps,
                   "strategies": results, "load_average": load}, f, indent=2)  # fmt: skip
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
