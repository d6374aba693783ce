"""Simulator throughput: events/s and images/s, CPU time per event, peak memory.

Each data-set size runs in its own process so peak RSS is measured per run; comparing
the sizes shows memory stays flat as the event count grows (the writer streams).

    .venv/bin/python benchmarks/bench_simulator.py                 # 2000 and 10000 events, 32x32x4 RGB
    .venv/bin/python benchmarks/bench_simulator.py --events 500 --size 64 --channels 1
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


def _one_run(args: argparse.Namespace, events: int) -> dict:
    from pipeline.config import SimulatorConfig
    from pipeline.simulator import generate

    cfg = SimulatorConfig(
        events=events,
        frames=args.frames,
        size=args.size,
        channels=args.channels,
        shards=args.shards,
        workers=args.workers,
        seed=0,
    )
    out = tempfile.mkdtemp(prefix="bench-sim-", dir=args.scratch)
    try:
        cpu0 = _cpu_seconds()
        wall0 = time.perf_counter()
        summary = generate(out, cfg, progress=False, preview=False)
        wall = time.perf_counter() - wall0
        cpu = _cpu_seconds() - cpu0
        written = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    kib = 1024  # ru_maxrss is in KiB on Linux
    return {
        "events": events,
        "geometry": f"{args.frames}x{args.size}x{args.size}x{args.channels}",
        "workers": summary["workers"],
        "wall_s": round(wall, 2),
        "events_per_s": round(events / wall, 1),
        "images_per_s": round(events * args.frames / wall, 1),
        "cpu_ms_per_event": round(1000 * cpu / events, 3),
        "events_per_cpu_s": round(events / cpu, 1),
        "bytes_per_event": round(written / events),
        "peak_rss_mib_parent": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib, 1),
        "peak_rss_mib_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib, 1),
    }


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, nargs="+", default=[2000, 10000])
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="0 = one per CPU core")
    p.add_argument("--scratch", default=None, help="where to write (a temp dir, removed after)")
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.single:
        print(json.dumps(_one_run(args, args.events[0])))
        return 0
    print(f"simulator benchmark on {os.cpu_count()} CPU core(s)")
    header = (
        f"{'events':>8} {'geometry':>10} {'workers':>7} {'wall s':>7} {'events/s':>9} {'images/s':>9} "
        f"{'cpu ms/ev':>9} {'ev/cpu-s':>9} {'KiB/ev':>7} {'RSS parent':>10} {'RSS worker':>10}"
    )
    print(header)
    for n in args.events:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--single",
            "--events",
            str(n),
            "--frames",
            str(args.frames),
            "--size",
            str(args.size),
            "--channels",
            str(args.channels),
            "--shards",
            str(args.shards),
            "--workers",
            str(args.workers),
        ] + (["--scratch", args.scratch] if args.scratch else [])
        r = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
        print(
            f"{r['events']:>8} {r['geometry']:>10} {r['workers']:>7} {r['wall_s']:>7} {r['events_per_s']:>9} "
            f"{r['images_per_s']:>9} {r['cpu_ms_per_event']:>9} {r['events_per_cpu_s']:>9} "
            f"{r['bytes_per_event'] / 1024:>7.1f} {r['peak_rss_mib_parent']:>8} MiB {r['peak_rss_mib_worker']:>6} MiB"
        )
    print(
        "events/s and images/s are wall clock over all workers; ev/cpu-s is per core (CPU time of all processes)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
