"""First-request latency after a SavedModel loads, with and without TF Serving's warm-up records.

The model is the pipeline's student (untrained weights; latency does not depend on them) at
the simulator's default geometry, exported with ``trainer.models.export`` and given the
``assets.extra/tf_serving_warmup_requests`` the pusher writes (``serving.warmup_events``
events). Each measurement runs in a fresh process (a warm graph would hide what is measured):
load the SavedModel with the server's loader (``serving.servables.SavedModelServable``), then

- ``cold``: send the first request at once (what a TF Serving user gets without warm-up records);
- ``warm``: replay the warm-up records first (``serving.warmup.replay``, what the server does
  before a version is AVAILABLE), then send the first request;

and time that first request and the next ``--requests`` (steady state), one event each, a
different event from the warm-up ones. Modes alternate over ``--rounds`` so background load
hits both alike; the table gives the median over rounds.

    .venv/bin/python benchmarks/bench_warmup.py            # ~1-2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from contract import tfenv  # noqa: E402,F401

# The measured stack is imported inside the functions that run in a measurement's own fresh
# process: a graph warmed by the orchestrating process would hide the effect being measured.

NAME = "bench"


def build(workdir: str, events: int) -> str:
    """The student SavedModel with its warm-up file, and a separate event for the first request."""
    import numpy as np

    from contract.config import StudentConfig
    from contract.layout import EventSpec
    from ondevice.frames import encode_png
    from serving.warmup import predict_logs, write_warmup_file
    from trainer.models.export import export_saved_model
    from trainer.models.student import build_student

    spec = EventSpec(("empty", "person", "vehicle", "animal"), 4, 32, 32, 3)
    model_dir = export_saved_model(build_student(spec, StudentConfig()), spec, os.path.join(workdir, "1"))
    rng = np.random.default_rng(0)
    frames = np.empty((events + 1, spec.frames), dtype=object)
    for i in range(events + 1):
        frames[i] = [
            encode_png(rng.integers(0, 256, spec.frame_shape, dtype=np.uint8)) for _ in range(spec.frames)
        ]
    write_warmup_file(model_dir, predict_logs(frames[:events], NAME))
    np.save(os.path.join(workdir, "request.npy"), frames[events:], allow_pickle=True)
    return model_dir


def measure(model_dir: str, mode: str, requests: int) -> dict:
    """One fresh process's figures (runs in the child)."""
    import numpy as np

    from contract import layout
    from serving.servables import SavedModelServable
    from serving.warmup import read_warmup_file, replay, warmup_path

    started = time.perf_counter()
    servable = SavedModelServable(model_dir)
    loaded = time.perf_counter() - started
    replayed = 0.0
    if mode == "warm":
        started = time.perf_counter()
        replay(servable, read_warmup_file(warmup_path(model_dir)), 4 * 1024 * 1024)
        replayed = time.perf_counter() - started
    frames = np.load(os.path.join(os.path.dirname(model_dir), "request.npy"), allow_pickle=True)
    signature = servable.signature("")
    inputs = {layout.SERVING_INPUT: frames}
    outputs = sorted(signature.outputs)
    times = []
    for _ in range(requests + 1):
        started = time.perf_counter()
        servable.run(signature, inputs, outputs)
        times.append(time.perf_counter() - started)
    return {
        "load_s": loaded,
        "replay_s": replayed,
        "first_ms": times[0] * 1000,
        "steady_p50_ms": statistics.median(times[1:]) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=30, help="steady-state requests after the first")
    parser.add_argument("--events", type=int, default=8, help="warm-up records (serving.warmup_events)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.requests)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-warmup-") as workdir:
        model_dir = build(workdir, args.events)
        results: dict[str, list[dict]] = {"cold": [], "warm": []}
        for r in range(args.rounds):
            for mode in ("cold", "warm") if r % 2 == 0 else ("warm", "cold"):
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--child", model_dir, mode,
                     "--requests", str(args.requests)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def med(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in results[mode])

    print(f"\nfirst request after a SavedModel load, median of {args.rounds} fresh processes per mode "
          f"(load average {os.getloadavg()[0]:.1f}):")  # fmt: skip
    print(
        f"{'mode':<6} {'load s':>7} {'replay s':>9} {'first ms':>9} "
        f"{'steady p50 ms':>14} {'first/steady':>13}"
    )
    for mode in ("cold", "warm"):
        first, steady = med(mode, "first_ms"), med(mode, "steady_p50_ms")
        print(
            f"{mode:<6} {med(mode, 'load_s'):>7.2f} {med(mode, 'replay_s'):>9.2f} "
            f"{first:>9.1f} {steady:>14.2f} "
            f"{first / steady:>12.1f}x"
        )
    print(
        f"warm-up records ({args.events}) make the first request "
        f"{med('cold', 'first_ms') / med('warm', 'first_ms'):.1f}x "
        f"faster; the server pays {med('warm', 'replay_s'):.2f} s of replay "
        "before the version is AVAILABLE"
    )


if __name__ == "__main__":
    main()
