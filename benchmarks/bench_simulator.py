"""Simulator throughput: events/s and images/s, CPU time per event, peak memory.

Each data-set size runs in its own process so peak RSS is measured per run; comparing
the sizes shows memory stays flat as the event count grows (the writer streams).

    .venv/bin/python benchmarks/bench_simulator.py       # 32x32x4 RGB: 2000 to files, 2000 and 5000 inline
    .venv/bin/python benchmarks/bench_simulator.py --events 500 --inline-events --size 64 --channels 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The measured stack (TensorFlow, TFX, the pipeline's modules) is imported inside the functions
# that run in a measurement's own process, so the orchestrating process stays small and its
# start-up is not counted in any figure.


def _one_run(args: argparse.Namespace, events: int) -> dict:
    from contract.config import SimulatorConfig
    from simulator import generate

    cfg = SimulatorConfig(
        events=events,
        frames=args.frames,
        size=args.size,
        channels=args.channels,
        shards=args.shards,
        workers=args.workers,
        inline_frames=args.inline,
        seed=0,
    )
    out = tempfile.mkdtemp(prefix="bench-sim-", dir=args.scratch)
    try:
        cpu0 = _cpu_seconds()
        wall0 = time.perf_counter()
        summary = generate(out, cfg, progress=False, preview=False)
        wall = time.perf_counter() - wall0
        user, system = (b - a for a, b in zip(cpu0, _cpu_seconds(), strict=True))
        cpu = user + system
        written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    kib = 1024  # ru_maxrss is in KiB on Linux
    return {
        "events": events,
        "frames_as": "b64" if args.inline else "files",
        "geometry": f"{args.frames}x{args.size}x{args.size}x{args.channels}",
        "workers": summary["workers"],
        "wall_s": round(wall, 2),
        "events_per_s": round(events / wall, 1),
        "images_per_s": round(events * args.frames / wall, 1),
        "cpu_ms_per_event": round(1000 * cpu / events, 3),
        "events_per_cpu_s": round(events / cpu, 1),
        "sys_percent": round(100 * system / cpu),
        "bytes_per_event": round(written / events),
        "peak_rss_mib_parent": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib, 1),
        "peak_rss_mib_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib, 1),
    }


def _cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, nargs="*", default=[2000], help="runs writing PNG files")
    p.add_argument("--inline-events", type=int, nargs="*", default=[2000, 5000], help="runs with b64 frames")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="0 = one per CPU core")
    p.add_argument("--scratch", default=None, help="where to write (a temp dir, removed after)")
    p.add_argument("--single", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.single:
        print(json.dumps(_one_run(args, args.single)))
        return 0
    print(f"simulator benchmark on {os.cpu_count()} CPU core(s)")
    print(
        f"{'events':>7} {'frames as':>9} {'geometry':>10} {'workers':>7} {'wall s':>6} {'events/s':>8} "
        f"{'images/s':>8} {'cpu ms/ev':>9} {'sys %':>5} {'ev/cpu-s':>8} {'KiB/ev':>6} {'RSS parent':>10} "
        f"{'RSS worker':>10}"
    )
    runs = [(n, False) for n in args.events] + [(n, True) for n in args.inline_events]
    for n, inline in runs:
        cmd = [sys.executable, os.path.abspath(__file__), "--single", str(n), "--frames", str(args.frames)]
        cmd += ["--size", str(args.size), "--channels", str(args.channels), "--shards", str(args.shards)]
        cmd += ["--workers", str(args.workers)] + (["--inline"] if inline else [])
        cmd += ["--scratch", args.scratch] if args.scratch else []
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{r['events']:>7} {r['frames_as']:>9} {r['geometry']:>10} {r['workers']:>7} {r['wall_s']:>6} "
            f"{r['events_per_s']:>8} {r['images_per_s']:>8} {r['cpu_ms_per_event']:>9} {r['sys_percent']:>5} "
            f"{r['events_per_cpu_s']:>8} {r['bytes_per_event'] / 1024:>6.1f} "
            f"{r['peak_rss_mib_parent']:>6} MiB "
            f"{r['peak_rss_mib_worker']:>6} MiB"
        )
    print("events/s, images/s: wall clock with all workers; ev/cpu-s: per core (CPU time of all processes);")
    print("sys %: share of CPU time in the kernel (creating directories and files).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
