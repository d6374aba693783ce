"""Productionize benchmark: the default teacher vs its distilled, pruned, quantized students.

One run, side by side on the same demo data (the simulator's events through EventExampleGen):

1. the default teacher (conv 32/64/128 residual + attention + FC 2048x2048), trained with
   ``eventpipe train --strategy single`` (same model as the pipeline's hybrid run);
2. the Distiller: dense distillation ("student float"), pruning fine-tune ("student pruned");
3. the LiteConverter: int8 and float16 TFLite, parity, params / FLOPs / bytes / latency
   (batch 1, 1 thread, each variant in its own process; TFLite without TensorFlow);
4. a float32 TFLite of the dense student, as the like-for-like reference for file size;
5. the TFLite files on each on-device runtime, LiteRT (ai-edge-litert) and tflite-runtime,
   side by side (p50 ms/event, batch 1, 1 thread, each runtime in its own process so both can
   be loaded), with the int8/float16 ratio per runtime.

Targets (issue 4): int8 bytes <= 1/4 of the float student; int8 latency >= 3x faster than the
teacher SavedModel per event; int8 accuracy >= 0.99 x teacher. The machine may be shared:
latency ratios are measured in the same run and are what to compare.

    .venv/bin/python benchmarks/bench_productionize.py                  # demo: 2000 events,
                                                                        # ~15-25 min on 2 cores
    .venv/bin/python benchmarks/bench_productionize.py --quick          # 600 events, short training, ~5-8 min
    .venv/bin/python benchmarks/bench_productionize.py --workdir W --reuse --json out.json
    .venv/bin/python benchmarks/bench_productionize.py --runtimes-only LITE_DIR
                                                                        # step 5 on a LiteConverter output
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from contract import tfenv  # noqa: E402,F401

# The measured stack (TensorFlow, TFX, the pipeline's modules) is imported inside the functions
# that run in a measurement's own process, so the orchestrating process stays small and its
# start-up is not counted in any figure.

TARGETS = {
    "int8_bytes_over_float_student": 0.25,  # at most
    "int8_speedup_over_teacher_savedmodel": 3.0,  # at least
    "int8_accuracy_over_teacher": 0.99,  # at least
}


def log(message: str) -> None:
    print(f"[bench-productionize] {message}", flush=True)


def make_examples(workdir: str, events: int, seed: int) -> str:
    """Simulator events -> EventExampleGen's Beam graph -> an Examples artifact directory."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from components.event_example_gen import executor
    from contract.config import Config, DataConfig, SimulatorConfig
    from pipeline.runners import beam_args
    from simulator import generate

    raw, examples, quarantine = (os.path.join(workdir, d) for d in ("events", "examples", "quarantine"))
    if os.path.isfile(os.path.join(examples, "event_spec.json")):
        return examples
    for d in (raw, examples, quarantine):
        shutil.rmtree(d, ignore_errors=True)
    generate(raw, SimulatorConfig(events=events, seed=seed), progress=True, preview=False)
    data = DataConfig()
    with beam.Pipeline(options=PipelineOptions(beam_args(Config()))) as p:
        executor.build_ingest(p, raw, data, examples, quarantine)
    summary = executor.finish_outputs(examples, quarantine, data)
    log(f"ingest: {summary['accepted']} of {summary['read']} events accepted, splits {summary['splits']}")
    return examples


def train_teacher(workdir: str, examples: str, steps: int, seed: int) -> str:
    """The default teacher architecture, trained single-device in a child process."""
    export = os.path.join(workdir, "teacher", "model")
    if os.path.isfile(os.path.join(export, "saved_model.pb")):
        return export
    command = [
        sys.executable, "-m", "pipeline.cli", "train", "--data", examples,
        "--workdir", os.path.join(workdir, "teacher"), "--export-dir", export,
        "--strategy", "single", "--logical-devices", "1", "--steps", str(steps), "--seed", str(seed),
        "--checkpoint-every", str(max(steps, 1)),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run(command, cwd=REPO, env=env)
    if done.returncode != 0:
        raise SystemExit(f"teacher training failed (exit {done.returncode})")
    return export


def float32_reference(student_dir: str, examples: str, out: str) -> dict[str, Any]:
    """Bytes of a float32 TFLite of the dense student: the like-for-like size reference."""
    from contract.files import STUDENT_FLOAT, DistillerOutput
    from contract.layout import EventSpec
    from trainer.lite import measure, tflite
    from trainer.models.student import load_keras

    spec = EventSpec.load(examples)
    model = load_keras(DistillerOutput(student_dir).keras(STUDENT_FLOAT))
    converted = tflite.convert_variant(model, spec, "float32", try_sparse=False)
    with open(out, "wb") as f:
        f.write(converted.content)
    return {"path": out, "bytes": measure.path_bytes(out)}


def _row(name: str, entry: dict[str, Any], kind: str | None = None) -> list[str]:
    latency = (entry.get("latency") or {}).get(kind or entry["format"]) or {}
    return [
        name,
        f"{entry['accuracy']:.4f}",
        f"{entry['params']:,}",
        f"{entry['flops_per_event'] / 1e6:.2f}M",
        f"{entry['bytes']['raw'] / 1024:.1f}",
        f"{entry['bytes']['gzipped'] / 1024:.1f}",
        f"{latency['p50_ms']:.3f}" if latency else "-",
        f"{latency['p99_ms']:.3f}" if latency else "-",
    ]


def print_table(report: dict[str, Any], reference: dict[str, Any]) -> None:
    teacher, student, tflite = report["teacher"], report["student"], report["tflite"]
    rows = [
        _row("teacher SavedModel", teacher),
        _row("student float SavedModel", student["float"]),
        _row("student float Keras", {**student["float"], "bytes": student["float"]["keras_bytes"]}, "keras"),
        _row("student pruned SavedModel", student["pruned"]),
        _row(
            "student pruned Keras", {**student["pruned"], "bytes": student["pruned"]["keras_bytes"]}, "keras"
        ),
        _row("student int8 TFLite", tflite["int8"]),
        _row("student float16 TFLite", tflite["float16"]),
    ]
    header = ["variant", "accuracy", "params", "FLOPs/ev", "KiB", "KiB gz", "p50 ms", "p99 ms"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    print(f"(float32 TFLite of the dense student, size reference: "
          f"{reference['bytes']['raw'] / 1024:.1f} KiB, "
          f"{reference['bytes']['gzipped'] / 1024:.1f} KiB gz)")  # fmt: skip


RUNTIME_FILES = {
    "int8": "model.tflite",
    "float16": "model_float16.tflite",
    "float32": "reference_float32.tflite",
}


def runtime_latencies(lite_dir: str, runs: int) -> dict[str, dict[str, dict[str, Any]]]:
    """p50/p99 of each TFLite file in ``lite_dir`` on each on-device runtime: runtime -> variant -> result.

    One process per (runtime, file): LiteRT and tflite-runtime are never loaded together, and
    the rounds alternate between all of them so a busy machine slows each alike.
    """
    from ondevice.runtime import ON_DEVICE_RUNTIMES
    from trainer.lite import measure

    files = {
        v: os.path.join(lite_dir, f)
        for v, f in RUNTIME_FILES.items()
        if os.path.isfile(os.path.join(lite_dir, f))
    }
    jobs = {f"{runtime}/{variant}": ("tflite", path, runtime) for runtime in ON_DEVICE_RUNTIMES
            for variant, path in files.items()}  # fmt: skip
    results = measure.latencies(jobs, runs=runs, warmup=20, rounds=10)
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for job, result in results.items():
        runtime, variant = job.split("/")
        table.setdefault(runtime, {})[variant] = result
    return table


def print_runtime_table(table: dict[str, dict[str, dict[str, Any]]]) -> None:
    variants = [v for v in RUNTIME_FILES if any(v in row for row in table.values())]
    header = ["runtime", *(f"{v} p50 ms" for v in variants), "int8/float16"]
    rows = []
    for runtime, row in table.items():
        version = next(iter(row.values()))["runtime"]["version"]
        ratio = (
            row["int8"]["p50_ms"] / row["float16"]["p50_ms"] if "int8" in row and "float16" in row else None
        )
        rows.append([f"{runtime} {version}",
                     *(f"{row[v]['p50_ms']:.3f}" if v in row else "-" for v in variants),
                     f"{ratio:.2f}" if ratio else "-"])  # fmt: skip
    names = list(table)
    if len(names) == 2 and all("int8" in table[n] for n in names):
        a, b = names
        rows.append([f"{b} / {a}", *(f"{table[b][v]['p50_ms'] / table[a][v]['p50_ms']:.2f}x" if v in table[a]
                                     and v in table[b] else "-" for v in variants), ""])  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def targets(report: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Each target with its measured value; bytes against every form of the float student."""
    comparison = report["comparison"]
    int8 = report["tflite"]["int8"]
    float_student = report["student"]["float"]
    bytes_ratios = {
        "vs float student Keras file": int8["bytes"]["raw"] / float_student["keras_bytes"]["raw"],
        "vs float student SavedModel": int8["bytes"]["raw"] / float_student["bytes"]["raw"],
        "vs float32 TFLite of the float student": int8["bytes"]["raw"] / reference["bytes"]["raw"],
        "gzipped vs float32 TFLite gzipped": int8["bytes"]["gzipped"] / reference["bytes"]["gzipped"],
    }
    results = {
        "int8_bytes_over_float_student": {
            "value": bytes_ratios["vs float student Keras file"],
            "target": "<= 0.25",
            "met": bytes_ratios["vs float student Keras file"] <= TARGETS["int8_bytes_over_float_student"],
            "all_ratios": bytes_ratios,
        },
        "int8_speedup_over_teacher_savedmodel": {
            "value": comparison.get("int8_speedup_over_teacher_savedmodel"),
            "target": ">= 3.0",
        },
        "int8_accuracy_over_teacher": {
            "value": comparison.get("int8_accuracy_over_teacher"),
            "target": ">= 0.99",
        },
    }
    speed = results["int8_speedup_over_teacher_savedmodel"]["value"]
    results["int8_speedup_over_teacher_savedmodel"]["met"] = speed is not None and speed >= 3.0
    acc = results["int8_accuracy_over_teacher"]["value"]
    results["int8_accuracy_over_teacher"]["met"] = acc is not None and acc >= 0.99
    return results


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=2000, help="simulated events (the demo size by default)")
    p.add_argument(
        "--teacher-steps", type=int, default=None, help="teacher optimisation steps (default: teacher.steps)"
    )
    p.add_argument(
        "--teacher-export", help="use this teacher SavedModel (e.g. a pipeline run's) instead of training one"
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="student dense distillation epochs (config default)"
    )
    p.add_argument("--prune-epochs", type=int, default=None, help="student pruning epochs (config default)")
    p.add_argument("--latency-runs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="600 events, 120 teacher steps, short distillation")
    p.add_argument("--workdir", help="keep everything here (default: a temporary directory, removed)")
    p.add_argument("--reuse", action="store_true", help="reuse data / teacher already in --workdir")
    p.add_argument("--json", help="write the full results here")
    p.add_argument(
        "--runtimes-only",
        metavar="LITE_DIR",
        help="only step 5: time the TFLite files of a LiteConverter output dir on each runtime",
    )
    a = p.parse_args(argv)
    if a.teacher_steps is None and not a.quick:
        from contract.config import TeacherConfig

        a.teacher_steps = TeacherConfig().steps
    if a.quick:
        a.events, a.teacher_steps = min(a.events, 600), min(a.teacher_steps or 120, 120)
        a.epochs = a.epochs or 6
        a.prune_epochs = a.prune_epochs or 3
        a.latency_runs = min(a.latency_runs, 150)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.runtimes_only:
        table = runtime_latencies(a.runtimes_only, a.latency_runs)
        print_runtime_table(table)
        if a.json:
            with open(a.json, "w", encoding="utf-8") as f:
                json.dump({"args": vars(a), "runtimes": table}, f, indent=2, default=float)
        return 0
    workdir = os.path.abspath(a.workdir) if a.workdir else tempfile.mkdtemp(prefix="bench-productionize-")
    if a.workdir and not a.reuse:
        for sub in ("events", "examples", "quarantine", "teacher", "student", "lite"):
            shutil.rmtree(os.path.join(workdir, sub), ignore_errors=True)
    os.makedirs(workdir, exist_ok=True)
    started = time.time()
    timings: dict[str, float] = {}
    try:
        t = time.time()
        examples = make_examples(workdir, a.events, a.seed)
        timings["data_s"] = time.time() - t
        t = time.time()
        teacher = a.teacher_export or train_teacher(workdir, examples, a.teacher_steps, a.seed)
        timings["teacher_s"] = time.time() - t

        from components.gates.release import decide_on_accuracies
        from contract.config import Config
        from trainer.distill.distillation import run_distillation
        from trainer.lite.convert import run_lite_conversion

        cfg = Config()
        if a.epochs:
            cfg.student.epochs = a.epochs
        if a.prune_epochs:
            cfg.student.prune_epochs = a.prune_epochs
        cfg.student.seed = cfg.lite.seed = a.seed
        cfg.lite.latency_runs = a.latency_runs
        student_dir, lite_dir = os.path.join(workdir, "student"), os.path.join(workdir, "lite")
        t = time.time()
        log("distilling the student (dense, then pruning)")
        run_distillation(examples, teacher, student_dir, cfg.student)
        timings["distill_s"] = time.time() - t
        t = time.time()
        log("converting, checking parity, measuring every variant")
        report = run_lite_conversion(student_dir, examples, lite_dir, cfg.lite, teacher_dir=teacher)
        # The release decision the pipeline's gates would make on these accuracies.
        report["blessing"] = decide_on_accuracies(
            report["teacher"]["accuracy"],
            report["student"][report["student"]["production"].removeprefix("student_")]["accuracy"],
            cfg.gates,
        )
        reference = float32_reference(
            student_dir, examples, os.path.join(lite_dir, "reference_float32.tflite")
        )
        timings["lite_s"] = time.time() - t
        t = time.time()
        log("timing the TFLite files on each on-device runtime")
        runtimes = runtime_latencies(lite_dir, a.latency_runs)
        timings["runtimes_s"] = time.time() - t

        print()
        print_table(report, reference)
        print()
        print("TFLite per on-device runtime (p50 ms/event, batch 1, 1 thread):")
        print_runtime_table(runtimes)
        print()
        results = targets(report, reference)
        for name, r in results.items():
            value = f"{r['value']:.3f}" if isinstance(r["value"], float) else str(r["value"])
            print(f"{'PASS' if r['met'] else 'MISS'}  {name} = {value} (target {r['target']})")
        for name, ratio in results["int8_bytes_over_float_student"]["all_ratios"].items():
            print(f"      int8 bytes {name}: {ratio:.3f}")
        c = report["comparison"]
        print(f"teacher/student: params {c.get('teacher_params_over_student', float('nan')):.1f}x, "
              f"FLOPs {c.get('teacher_flops_over_student', float('nan')):.1f}x, "
              "bytes (teacher SavedModel / int8) "
              f"{c.get('teacher_bytes_over_int8', float('nan')):.1f}x")  # fmt: skip
        parity = report["parity"]
        print(f"parity: int8 agrees with the float student on {parity['agreement']:.2%} of "
              f"{parity['events']} eval events (gate {parity['min_agreement']:.0%}: "
              f"{'blessed' if parity['blessed'] else 'NOT blessed'})")  # fmt: skip
        if "blessing" in report:
            b = report["blessing"]
            print(f"blessing (floor / vs teacher / regression): "
                  f"{'blessed' if b['blessed'] else 'NOT blessed'} "
                  f"{'; '.join(b['problems'])}")  # fmt: skip
        kept = (
            f"{report['plots']['tradeoff']}, {report['plots']['confusion']}"
            if a.workdir
            else "pass --workdir to keep them"
        )
        print(f"plots: {kept}")
        timings["total_s"] = time.time() - started
        print("time: " + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in timings.items()))
        if a.json:
            with open(a.json, "w", encoding="utf-8") as f:
                json.dump({"args": vars(a), "report": report, "float32_reference": reference,
                           "runtimes": runtimes, "targets": results, "timings": timings},
                          f, indent=2, default=float)  # fmt: skip
    finally:
        if not a.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
