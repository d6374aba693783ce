"""Ingest benchmark: simulator rate, ingest+validate vs. the TFRecord-writing floor, memory at scale.

Measured side by side in one run (the machine may be shared: compare the ratios):

1. the simulator writing ``--events`` events (JSONL + PNG files): events/s, images/s;
2. the floor: the same frame bytes written as gzipped TFRecords of the layout by one process
   (read manifest + frame files, ``layout.make_example``, ``tf.io.TFRecordWriter``) — the I/O
   limit any ingest has to pay;
3. ``EventExampleGen``'s Beam graph (``beam_graph.build_ingest`` + ``finish_outputs``: every event
   read, checked, fully decoded, deduplicated, split, written) on the DirectRunner, in-memory
   and multi-processing with ``--workers`` processes, as a ratio to the floor;
4. peak RSS of the whole process tree of ingest at ``--events`` and ``--large`` events (it
   should stay flat), and the simulator's at both sizes;
5. an extrapolation to the seeds' inventory (1.47M labelled events / 27.8M images) on N Beam
   workers, with its assumptions printed next to it.

Every measurement runs in its own process (a sampler thread sums RSS over it and its children);
the parent prints one line per step and the table at the end.

    .venv/bin/python benchmarks/bench_ingest.py                 # 10k + 100k events, ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_ingest.py --quick         # 1000 events, no large run, ~1-2 min
    .venv/bin/python benchmarks/bench_ingest.py --large 0 --size 64 --json ingest.json
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
import threading
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The measured stack (TensorFlow, TFX, the pipeline's modules) is imported inside the functions
# that run in a measurement's own process, so the orchestrating process stays small and its
# start-up is not counted in any figure.

INVENTORY_EVENTS = 1_470_000  # the seeds' labelled events
INVENTORY_IMAGES = 27_800_000  # and raw images
MIB = 1024 * 1024
REPLICAS_DIR = "replicas"


# -- measurement side (runs inside a child process) ---------------------------------------
class TreeSampler:
    """Samples RSS summed over this process and all its descendants; keeps the peak.

    Beam's multi-processing workers and the simulator's pool are separate processes, so the
    process's own ru_maxrss would miss them. Also remembers the last CPU times seen of every
    descendant, for those not yet reaped (reaped ones are in RUSAGE_CHILDREN).
    """

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._me = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_tree = 0
        self.peak_processes = 1
        self._child_cpu: dict[int, float] = {}

    def sample(self) -> int:
        import psutil

        total, procs = 0, [self._me]
        try:
            procs += self._me.children(recursive=True)
        except psutil.Error:
            pass
        for proc in procs:
            try:
                total += proc.memory_info().rss
                if proc.pid != self._me.pid:
                    t = proc.cpu_times()
                    self._child_cpu[proc.pid] = t.user + t.system
            except psutil.Error:
                continue
        self.peak_tree = max(self.peak_tree, total)
        self.peak_processes = max(self.peak_processes, len(procs))
        return total

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> TreeSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def unreaped_cpu(self) -> float:
        """CPU seconds of descendants still alive (not yet counted by RUSAGE_CHILDREN)."""
        import psutil

        alive = 0.0
        for pid, cpu in self._child_cpu.items():
            if psutil.pid_exists(pid):
                alive += cpu
        return alive


def _cpu_now() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(work, *, warm: Any = None) -> dict[str, Any]:
    """Run ``work()`` under the sampler; wall, CPU (process tree) and memory figures."""
    import psutil

    baseline = psutil.Process().memory_info().rss
    with TreeSampler() as sampler:
        cpu0, wall0 = _cpu_now(), time.perf_counter()
        result = work()
        wall, cpu = time.perf_counter() - wall0, _cpu_now() - cpu0
    cpu += sampler.unreaped_cpu()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_baseline_mib": baseline / MIB,
        "rss_peak_tree_mib": sampler.peak_tree / MIB,
        "processes": sampler.peak_processes,
        "result": result,
    }


def _dir_bytes(path: str, suffix: str = "") -> int:
    return sum(
        os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs if f.endswith(suffix)
    )


def measure_simulate(a: argparse.Namespace) -> dict[str, Any]:
    from contract.config import SimulatorConfig
    from simulator import generate

    cfg = SimulatorConfig(
        events=a.n, frames=a.frames, size=a.size, shards=a.shards, workers=a.sim_workers, seed=0
    )
    m = _timed(lambda: generate(a.data, cfg, progress=False, preview=False))
    summary = m.pop("result")
    m.update(workers=summary["workers"], input_bytes=_dir_bytes(a.data))
    return m


def measure_limit(a: argparse.Namespace) -> dict[str, Any]:
    """The floor: read the frame bytes, build the layout's tf.Example, write gzipped TFRecords."""
    import tensorflow as tf

    from contract import layout
    from contract.config import SimulatorConfig

    classes = SimulatorConfig().classes
    manifests = sorted(f for f in os.listdir(a.data) if f.endswith(".jsonl"))
    os.makedirs(a.out, exist_ok=True)
    phases = {"read_s": 0.0, "write_s": 0.0, "events": 0}

    def work() -> None:
        options = tf.io.TFRecordOptions(compression_type="GZIP")
        for name in manifests:
            out = os.path.join(a.out, name.replace(".jsonl", ".tfrecord.gz"))
            with open(os.path.join(a.data, name), "rb") as f, tf.io.TFRecordWriter(out, options) as w:
                for line in f:
                    t0 = time.perf_counter()
                    rec = json.loads(line)
                    frames = []
                    for rel in rec["frames"]:
                        with open(os.path.join(a.data, rel), "rb") as fr:
                            frames.append(fr.read())
                    t1 = time.perf_counter()
                    label = rec.get("label")
                    example = layout.make_example(
                        frames=frames,
                        height=a.size,
                        width=a.size,
                        channels=3,
                        label=classes.index(label) if label else layout.UNLABELLED,
                        label_name=label or "",
                        event_id=rec["event_id"],
                        device_id=rec["device_id"],
                        timestamp=rec["timestamp"],
                    )
                    w.write(example.SerializeToString())
                    phases["read_s"] += t1 - t0
                    phases["write_s"] += time.perf_counter() - t1
                    phases["events"] += 1

    m = _timed(work)
    m.pop("result")
    m.update(phases, output_bytes=_dir_bytes(a.out))
    return m


def measure_ingest(a: argparse.Namespace) -> dict[str, Any]:
    """EventExampleGen's Beam graph on the DirectRunner with the options the local runner uses."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from components.event_example_gen import beam_graph
    from contract.config import Config, DataConfig
    from pipeline.runners import beam_args

    cfg = Config()
    cfg.run.beam_workers = a.workers
    options = PipelineOptions(beam_args(cfg))
    data = DataConfig()
    examples, quarantine = os.path.join(a.out, "examples"), os.path.join(a.out, "quarantine")

    def work() -> dict[str, Any]:
        with beam.Pipeline(options=options) as p:
            beam_graph.build_ingest(p, a.data, data, examples, quarantine)
        return beam_graph.finish_outputs(examples, quarantine, data)

    m = _timed(work)
    summary = m.pop("result")
    if summary["read"] != a.n or summary["read"] != summary["accepted"] + summary["rejected"]:
        raise SystemExit(f"ingest accounted for {summary['read']} of {a.n} events: {summary}")
    if summary["rejected"]:  # simulated events are all valid: a rejection means a broken measurement
        raise SystemExit(f"ingest rejected simulated events: {summary['rejected_by_reason']}")
    m.update(
        mode=beam_args(cfg)[0].split("=", 1)[1],
        read=summary["read"],
        accepted=summary["accepted"],
        rejected=summary["rejected"],
        output_bytes=_dir_bytes(examples, ".gz"),
    )
    return m


MEASURES = {"simulate": measure_simulate, "limit": measure_limit, "ingest": measure_ingest}


# -- orchestration side (the parent) -------------------------------------------------------
def replicate_events(data: str, extra: int) -> int:
    """Add ``extra`` events to a simulator output by re-using its events under fresh ids.

    Replica manifests go to ``data/replicas`` and point at the same frame files
    (``../frames/...``), so a large set costs no new images on disk: creating and deleting
    half a million small files takes longer than the ingest being measured. Ingest's work
    per event is unchanged: every frame is still resolved, opened, read and fully decoded,
    and every id is unique. Returns the number of manifests written.
    """
    manifests = sorted(f for f in os.listdir(data) if f.endswith(".jsonl"))
    out_dir = os.path.join(data, REPLICAS_DIR)
    os.makedirs(out_dir)
    copy, written = 0, 0
    while extra > 0:
        copy += 1
        for name in manifests:
            if extra <= 0:
                break
            target = os.path.join(out_dir, f"r{copy:04d}-{name}")
            with (
                open(os.path.join(data, name), encoding="utf-8") as src,
                open(target, "w", encoding="utf-8") as dst,
            ):
                for line in src:
                    if extra <= 0:
                        break
                    record = json.loads(line)
                    record["event_id"] = f"{record['event_id']}-r{copy}"
                    record["frames"] = [f"../{ref}" for ref in record["frames"]]
                    dst.write(json.dumps(record) + "\n")
                    extra -= 1
            written += 1
    return written


def _run_child(kind: str, log_dir: str, **kw: Any) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", kind]
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    log = os.path.join(log_dir, f"{kind}-{kw.get('n')}-{kw.get('workers', '')}.log")
    with open(log, "w") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO)
    if done.returncode != 0:
        with open(log) as f:
            tail = f.read()[-4000:]
        raise SystemExit(f"{kind} measurement failed (exit {done.returncode}); log {log}:\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def _fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def extrapolate(r: dict[str, Any], frames: int, workers_list: list[int]) -> dict[str, Any]:
    """Time for the inventory on N Beam workers, from measured per-core costs.

    Cost per image = CPU seconds per event / frames per event (the per-event overhead is
    charged to images, so this is conservative for the inventory's ~19 images/event).
    Optimistic: marginal in-memory cost (fixed start-up removed using the two sizes).
    Conservative: multi-processing average cost (Fn API data plane between processes, as on
    portable runners, plus worker start-up amortised over the measured events).
    """
    small = r["ingest_in_memory"]
    n_small = small["events"]
    per_event_avg = small["cpu_s"] / n_small
    large = r.get("ingest_large")
    if large and large["events"] > n_small:
        marginal = (large["cpu_s"] - small["cpu_s"]) / (large["events"] - n_small)
        if marginal <= 0:  # noise on a shared machine; fall back to the average
            marginal = per_event_avg
        fixed = max(0.0, small["cpu_s"] - marginal * n_small)
    else:
        marginal, fixed = per_event_avg, 0.0
    multi = r["ingest_multi"]
    conservative = multi["cpu_s"] / multi["events"]
    per_image = {"optimistic": marginal / frames, "conservative": max(conservative, marginal) / frames}
    image_bytes_in = r["simulate"]["input_bytes"] / (r["simulate"]["events"] * frames)
    image_bytes_out = small["output_bytes"] / (n_small * frames)
    floor_per_image = r["limit"]["cpu_s"] / (r["limit"]["events"] * frames)
    rows = []
    for n in workers_list:
        row = {"workers": n}
        for name, cost in per_image.items():
            row[f"{name}_s"] = INVENTORY_IMAGES * cost / n
        row["floor_s"] = INVENTORY_IMAGES * floor_per_image / n
        # Bytes each worker moves per second in the optimistic case: read input, write staging,
        # read it back, write the gzipped split (staging ~ output size, frames dominate).
        seconds = row["optimistic_s"]
        row["io_mib_s_total"] = INVENTORY_IMAGES * (image_bytes_in + 3 * image_bytes_out) / seconds / MIB
        rows.append(row)
    out: dict[str, Any] = {
        "inventory_events": INVENTORY_EVENTS,
        "inventory_images": INVENTORY_IMAGES,
        "cpu_ms_per_image_optimistic": 1000 * per_image["optimistic"],
        "cpu_ms_per_image_conservative": 1000 * per_image["conservative"],
        "cpu_ms_per_image_floor": 1000 * floor_per_image,
        "fixed_startup_cpu_s": fixed,
        "output_tib": INVENTORY_IMAGES * image_bytes_out / 1024**4,
        "rows": rows,
    }
    if large and large["events"] > n_small:
        slope = (large["rss_peak_tree_mib"] - small["rss_peak_tree_mib"]) / (large["events"] - n_small)
        out["rss_mib_per_1k_events"] = 1000 * slope
        out["single_machine_rss_gib"] = (
            small["rss_peak_tree_mib"] + slope * (INVENTORY_EVENTS - n_small)
        ) / 1024
    sim = r["simulate"]
    out["simulator_core_hours"] = INVENTORY_IMAGES * sim["cpu_s"] / (sim["events"] * frames) / 3600
    return out


def _print_report(r: dict[str, Any], a: argparse.Namespace) -> None:
    frames = a.frames
    print()
    print(
        f"== ingest benchmark: {a.size}x{a.size} RGB, {frames} frames/event, {os.cpu_count()} CPU core(s), "
        f"load avg {r['load_start']:.1f} -> {r['load_end']:.1f} =="
    )
    head = (
        f"{'measurement':<34} {'events':>7} {'wall s':>7} {'events/s':>9} {'images/s':>9} "
        f"{'ev/cpu-s':>9} {'peak RSS':>10} {'procs':>5}"
    )
    print(head)
    print("-" * len(head))
    order = [
        ("simulate", "simulator (PNG files)"),
        ("limit", "floor: write gz TFRecords (1 proc)"),
        ("ingest_in_memory", "ingest+validate in_memory"),
        ("ingest_multi", f"ingest+validate multi_proc x{a.workers}"),
        ("simulate_large", "simulator (PNG files)"),
        ("ingest_large", f"ingest+validate {a.large_mode}"),
    ]
    for key, label in order:
        m = r.get(key)
        if not m:
            continue
        print(
            f"{label:<34} {m['events']:>7} {m['wall_s']:>7.1f} {_rate(m['events'], m['wall_s']):>9.1f} "
            f"{_rate(m['events'] * frames, m['wall_s']):>9.1f} {_rate(m['events'], m['cpu_s']):>9.1f} "
            f"{m['rss_peak_tree_mib']:>6.0f} MiB {m['processes']:>5}"
        )
    lim = r["limit"]
    print()
    print(
        f"floor split: reading manifest+frames {lim['read_s']:.1f} s, "
        f"make_example+gzip write {lim['write_s']:.1f} s; "
        f"output {lim['output_bytes'] / lim['events'] / 1024:.1f} KiB/event"
    )
    for key in ("ingest_in_memory", "ingest_multi"):
        m = r[key]
        print(
            f"{m['label']:<28} {m['wall_s'] / lim['wall_s']:5.1f}x the floor's wall time, "
            f"{(m['cpu_s'] / m['events']) / (lim['cpu_s'] / lim['events']):5.1f}x its CPU per event "
            f"({1000 * m['cpu_s'] / m['events']:.2f} vs {1000 * lim['cpu_s'] / lim['events']:.2f} ms)"
        )
    if r.get("ingest_large"):
        s, big = (
            r["ingest_in_memory"] if a.large_mode == "in_memory" else r["ingest_multi"],
            r["ingest_large"],
        )
        slope = (big["rss_peak_tree_mib"] - s["rss_peak_tree_mib"]) / (big["events"] - s["events"])
        print(
            f"peak RSS of ingest ({a.large_mode}, process tree): "
            f"{s['events']} events {s['rss_peak_tree_mib']:.0f} MiB, "
            f"{big['events']} events {big['rss_peak_tree_mib']:.0f} MiB -> "
            f"ratio {big['rss_peak_tree_mib'] / s['rss_peak_tree_mib']:.2f} "
            f"for {big['events'] / s['events']:.0f}x the events"
        )
        print(
            "  (after imports, before the run: "
            f"{s['rss_baseline_mib']:.0f} / {big['rss_baseline_mib']:.0f} MiB; "
            f"growth {slope * 1024:.2f} KiB per extra event)"
        )
        if r.get("simulate_large"):
            ss, sb = r["simulate"], r["simulate_large"]
            print(
                f"peak RSS of the simulator: {ss['events']} events {ss['rss_peak_tree_mib']:.0f} MiB, "
                f"{sb['events']} events {sb['rss_peak_tree_mib']:.0f} MiB -> "
                f"ratio {sb['rss_peak_tree_mib'] / ss['rss_peak_tree_mib']:.2f}"
            )
        else:
            print(
                f"  (large set: the {s['events']} simulated events + "
                f"{big['events'] - s['events']} replicas under new ids "
                "reading the same frame files; --large-source simulate renders them all)"
            )
    x = r["extrapolation"]
    print()
    print(
        f"extrapolation to the inventory: {INVENTORY_EVENTS / 1e6:.2f}M labelled events, "
        f"{INVENTORY_IMAGES / 1e6:.1f}M images "
        f"({a.size}x{a.size} PNG as measured)"
    )
    print(
        f"  CPU per image: {x['cpu_ms_per_image_optimistic']:.2f} ms optimistic, "
        f"{x['cpu_ms_per_image_conservative']:.2f} ms conservative, "
        f"{x['cpu_ms_per_image_floor']:.2f} ms floor; "
        f"output {x['output_tib']:.2f} TiB gzipped TFRecords"
    )
    print(f"  {'workers':>7} {'optimistic':>11} {'conservative':>12} {'floor':>9} {'I/O all workers':>16}")
    for row in x["rows"]:
        print(
            f"  {row['workers']:>7} {_fmt_duration(row['optimistic_s']):>11} "
            f"{_fmt_duration(row['conservative_s']):>12} "
            f"{_fmt_duration(row['floor_s']):>9} {row['io_mib_s_total']:>11.0f} MiB/s"
        )
    if "single_machine_rss_gib" in x:
        print(
            f"  DirectRunner on one machine: RSS grows {x['rss_mib_per_1k_events']:.2f} MiB per 1k events "
            f"-> ~{x['single_machine_rss_gib']:.1f} GiB peak at {INVENTORY_EVENTS / 1e6:.2f}M events"
        )
    print(
        f"  simulator: {x['simulator_core_hours']:.1f} core-hours "
        f"to render {INVENTORY_IMAGES / 1e6:.1f}M images"
    )
    print("  assumptions: one Beam worker = one core delivering the measured per-core rate; linear scaling")
    print("  (events are independent; the only shuffles carry ~0.3 KiB of metadata per event); the input is")
    print(
        "  split into >= N manifests (a manifest is ingest's unit of parallelism); storage sustains the I/O"
    )
    print("  column; cost per image = CPU per event / frames (per-event overhead charged to images:")
    print("  conservative at the inventory's ~19 images/event); decode cost grows with pixels, so rerun")
    print("  with --size matching the real frames. optimistic = in-process marginal cost (fixed start-up")
    print("  removed using the two sizes); conservative = multi-processing average (Fn API data plane")
    print("  between processes as on portable runners, worker start-up amortised over --events/--workers).")
    if not r.get("ingest_large"):
        print(
            "  without a --large run the optimistic cost still includes the fixed start-up (an upper bound)."
        )


def _orchestrate(a: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    own_root = a.workdir is None
    root = tempfile.mkdtemp(prefix="bench-ingest-", dir=a.workdir)
    logs = os.path.join(root, "logs")
    os.makedirs(logs)
    r: dict[str, Any] = {
        "config": {k: v for k, v in vars(a).items() if k not in ("measure", "n", "data", "out")},
        "cpu_count": os.cpu_count(),
        "load_start": os.getloadavg()[0],
    }
    small_data, large_data = os.path.join(root, "events-small"), os.path.join(root, "events-large")
    common = {"frames": a.frames, "size": a.size, "shards": a.shards}
    steps = [
        ("simulate", "simulate", {"n": a.events, "data": small_data, "sim_workers": a.sim_workers}),
        ("limit", "limit", {"n": a.events, "data": small_data, "out": os.path.join(root, "floor")}),
        (
            "ingest_in_memory",
            "ingest",
            {"n": a.events, "data": small_data, "out": os.path.join(root, "ing-mem"), "workers": 1},
        ),
        (
            "ingest_multi",
            "ingest",
            {"n": a.events, "data": small_data, "out": os.path.join(root, "ing-multi"), "workers": a.workers},
        ),
    ]
    if a.large:
        large_workers = 1 if a.large_mode == "in_memory" else a.workers
        if a.large_source == "replicate":
            large_data = small_data
            steps.append(("replicate", "replicate", {"n": a.large - a.events}))
        else:
            steps.append(
                (
                    "simulate_large",
                    "simulate",
                    {"n": a.large, "data": large_data, "sim_workers": a.sim_workers},
                )
            )
        steps += [
            (
                "ingest_large",
                "ingest",
                {
                    "n": a.large,
                    "data": large_data,
                    "out": os.path.join(root, "ing-large"),
                    "workers": large_workers,
                },
            ),
        ]
    labels = {"ingest_in_memory": "ingest in_memory", "ingest_multi": f"ingest multi_processing x{a.workers}"}
    try:
        bar = tqdm(steps, desc="bench-ingest", unit="step", file=sys.stderr)
        for key, kind, kw in bar:
            bar.set_postfix_str(f"{key} {kw['n']} events")
            if kind == "replicate":
                t0 = time.perf_counter()
                manifests = replicate_events(small_data, kw["n"])
                r[key] = {"events": kw["n"], "manifests": manifests, "wall_s": time.perf_counter() - t0}
                tqdm.write(
                    f"{key:<18} {kw['n']:>7} events  {r[key]['wall_s']:7.1f} s  ({manifests} manifests)",
                    file=sys.stderr,
                )
                continue
            m = _run_child(kind, logs, **common, **kw)
            m["events"] = kw["n"]
            m["label"] = labels.get(key, key)
            r[key] = m
            tqdm.write(
                f"{key:<18} {kw['n']:>7} events  {m['wall_s']:7.1f} s  "
                f"{m['events'] / m['wall_s']:8.1f} events/s  "
                f"cpu {m['cpu_s']:7.1f} s  peak RSS {m['rss_peak_tree_mib']:6.0f} MiB",
                file=sys.stderr,
            )
            out = kw.get("out")
            if out and kind == "ingest":
                shutil.rmtree(out, ignore_errors=True)  # keep the disk footprint to one run's output
    finally:
        if own_root or not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    r["load_end"] = os.getloadavg()[0]
    r["extrapolation"] = extrapolate(r, a.frames, a.extrapolate_workers)
    return r


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--events", type=int, default=10_000, help="events for throughput and the small memory run"
    )
    p.add_argument("--large", type=int, default=100_000, help="events for the large memory run (0 skips it)")
    p.add_argument("--size", type=int, default=32, help="frame height and width in pixels")
    p.add_argument("--frames", type=int, default=4, help="frames per event")
    p.add_argument("--shards", type=int, default=8, help="simulator manifests (ingest's unit of parallelism)")
    p.add_argument("--workers", type=int, default=2, help="Beam DirectRunner processes for multi_processing")
    p.add_argument("--sim-workers", type=int, default=0, help="simulator processes (0 = one per core)")
    p.add_argument(
        "--large-source",
        choices=("replicate", "simulate"),
        default="replicate",
        help="large set: the --events set plus replicas under new ids reading the same frame files "
        "(default; no extra files to write and delete), or all rendered by the simulator",
    )
    p.add_argument(
        "--large-mode",
        choices=("in_memory", "multi_processing"),
        default="in_memory",
        help="DirectRunner mode of the large run (compared with the same mode at --events)",
    )
    p.add_argument(
        "--extrapolate-workers",
        type=lambda s: [int(v) for v in s.split(",")],
        default=[1, 8, 32, 128],
        help="Beam worker counts for the extrapolation, e.g. 1,8,32",
    )
    p.add_argument("--workdir", default=None, help="scratch parent directory (default: a temp dir, removed)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory under --workdir")
    p.add_argument("--json", default=None, help="also write every figure to this JSON file")
    p.add_argument("--quick", action="store_true", help="1000 events, no large run (~1-2 minutes)")
    # Internal: one measurement in this process, JSON on the last stdout line.
    p.add_argument("--measure", choices=sorted(MEASURES), help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.measure:
        return a
    if a.quick:
        a.events, a.large = min(a.events, 1000), 0
    if a.events < 1 or a.large < 0 or a.frames < 1 or a.size < 8 or a.workers < 2 or a.shards < 1:
        p.error("need --events >= 1, --large >= 0, --frames >= 1, --size >= 8, --workers >= 2, --shards >= 1")
    if a.large and a.large <= a.events:
        p.error(f"--large ({a.large}) must exceed --events ({a.events}) to show how memory scales, or be 0")
    a.shards = min(a.shards, a.events)
    return a


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    if a.measure:
        from contract import tfenv  # noqa: F401  (before TensorFlow, in this child process)

        print(json.dumps(MEASURES[a.measure](a)))
        return 0
    r = _orchestrate(a)
    _print_report(r, a)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(r, f, indent=2, sort_keys=True)
        print(f"figures written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
