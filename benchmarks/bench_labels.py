"""Label efficiency: how much self-supervised pre-training buys when few events are labelled.

One simulated data set with an unlabelled majority is ingested once; then, for each label
fraction (5%, 10%, 25%, 100% of the labelled train events keep their label, the rest join the
unlabelled split), the teacher is trained from scratch and from the pre-trained backbone, and a
student is distilled from each (labelled + unlabelled events, dense phase only: pruning and QAT
do not change what this measures). Pre-training reads no labels, and every fraction has the same
train + unlabelled events, so one pre-trained backbone serves them all. The eval split is the
same everywhere and never pre-trained on. A linear probe (logistic regression on the frozen
backbone's features, random and pre-trained) shows what the pretext itself put into the backbone.

Target (issue 15): at 10% labels the pre-trained teacher's student reaches >= 90% of the
100%-label student's accuracy and beats the 10% student whose teacher started from scratch.

    .venv/bin/python benchmarks/bench_labels.py      # 10k events, 90% unlabelled: over an hour
                                                      # on 2 cores (not run; 10 pre-training epochs
                                                      # alone ~29 min at 0.60 s per step)
    .venv/bin/python benchmarks/bench_labels.py --events 3000 --unlabelled-fraction 0.6 --fractions 0.1,1 \
        --teacher-steps 200 --pretrain-steps 800        # 20-31 min on 2 cores (docs/benchmarks.md)
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from contract import tfenv  # noqa: E402,F401  (Keras 2 before TensorFlow)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def generate(args: argparse.Namespace, out: str) -> dict:
    """The demo set, timed (the simulator renders the unlabelled majority as cheaply as the rest)."""
    from contract.config import SimulatorConfig
    from simulator.writer import generate as render

    cfg = SimulatorConfig(events=args.events, frames=args.frames, size=args.size,
                          unlabelled_fraction=args.unlabelled_fraction, seed=args.seed)  # fmt: skip
    began = time.perf_counter()
    summary = render(out, cfg, progress=False, preview=False)
    seconds = time.perf_counter() - began
    return {"events": args.events, "unlabelled_fraction": args.unlabelled_fraction,
            "seconds": round(seconds, 1), "events_per_second": round(args.events / seconds, 1),
            "workers": summary.get("workers")}  # fmt: skip


def ingest(events: str, work: str) -> tuple[str, float]:
    """``eventpipe validate`` (the pipeline's own ingest); returns the Examples artifact and seconds."""
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "validate", "--data", events, "--workdir", work],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode:
        raise SystemExit(f"ingest failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    with open(os.path.join(work, "report.json"), encoding="utf-8") as f:
        return json.load(f)["examples"], time.perf_counter() - began


def with_fraction(examples: str, fraction: float, out: str, seed: int) -> dict:
    """A copy of ``examples`` where only ``fraction`` of the labelled train events keep their label.

    The rest are written to the unlabelled split with label -1, as ingest writes unlabelled
    events; which events keep their label is a seeded choice, the same for every run.
    """
    import numpy as np
    import tensorflow as tf

    from contract import layout

    shutil.copytree(layout.split_dir(examples, layout.EVAL), layout.split_dir(out, layout.EVAL))
    shutil.copy(os.path.join(examples, layout.SPEC_FILE), out)
    train = [
        bytes(r.numpy()) for r in tf.data.TFRecordDataset(layout.split_files(examples, layout.TRAIN), "GZIP")
    ]
    unlabelled = [bytes(r.numpy()) for r in
                  tf.data.TFRecordDataset(layout.split_files(examples, layout.UNLABELLED_SPLIT),
                                          "GZIP")]  # fmt: skip
    keep = set(
        np.random.default_rng(seed).permutation(len(train))[: max(1, round(fraction * len(train)))].tolist()
    )
    dropped = []
    for i, record in enumerate(train):
        if i in keep:
            continue
        example = tf.train.Example.FromString(record)
        example.features.feature[layout.LABEL].int64_list.value[:] = [layout.UNLABELLED]
        example.features.feature[layout.LABEL_NAME].bytes_list.value[:] = [b""]
        dropped.append(example.SerializeToString())
    for split, records in ((layout.TRAIN, [r for i, r in enumerate(train) if i in keep]),
                           (layout.UNLABELLED_SPLIT, unlabelled + dropped)):  # fmt: skip
        os.makedirs(layout.split_dir(out, split), exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(layout.split_dir(out, split), "data.gz"), options="GZIP") as w:
            for r in records:
                w.write(r)
    return {"labelled": len(keep), "unlabelled": len(unlabelled) + len(dropped)}


def config(args: argparse.Namespace):  # -> Config (imported lazily)
    from contract.config import Config

    cfg = Config()
    cfg.set("teacher.strategy", args.strategy)
    cfg.set("teacher.logical_devices", args.logical_devices)
    cfg.set("pretrain.strategy", args.strategy)
    if args.teacher_steps:
        cfg.set("teacher.steps", args.teacher_steps)
    if args.pretrain_steps:
        cfg.set("pretrain.steps", args.pretrain_steps)
    cfg.set("student.epochs", args.student_epochs)
    cfg.set("student.prune_epochs", 0)
    cfg.set("student.qat_epochs", 0)
    cfg.set("student.min_steps", args.student_min_steps)
    for item in args.set:
        cfg.apply_overrides([item])
    return cfg


def student(examples: str, teacher_dir: str, out: str, cfg) -> dict:
    from trainer.distill.distillation import run_distillation

    report = run_distillation(examples, teacher_dir, out, cfg.student)
    return {"distilled": report["eval"]["student_float"]["accuracy"],
            "scratch": report["eval"]["student_scratch"]["accuracy"],
            "seconds": report["seconds"]}  # fmt: skip


def linear_probe(
    examples: str, train_dirs: dict[float, str], backbone: str | None, cfg
) -> dict[float, float]:
    """Eval accuracy of a logistic regression on the frozen backbone's features, per label fraction.

    The features are each event's frame embeddings averaged and maxed over its K frame slots (a
    padded slot included, as the teacher sees it); ``backbone`` None: the teacher's random
    initialisation. What the pretext put into the backbone, before any
    fine-tuning can change it (or wash it out). Run in this process after every training.
    """
    import numpy as np
    import tf_keras as keras
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from contract import layout
    from contract.layout import EventSpec
    from trainer.data import eval_batches
    from trainer.models.teacher import frame_embeddings
    from trainer.pretrain.model import load_backbone

    spec = EventSpec.load(examples)
    keras.utils.set_random_seed(cfg.teacher.seed)
    frames = keras.Input(shape=spec.input_shape, dtype="float32")
    model = keras.Model(frames, frame_embeddings(frames, spec, cfg.teacher))
    if backbone:
        load_backbone(model, backbone, cfg.teacher)

    def features(root: str, split: str) -> tuple:
        xs, ys = [], []
        for batch in eval_batches(layout.split_files(root, split), spec, batch_size=128):
            e = model(batch[layout.FRAMES], training=False).numpy()
            xs.append(np.concatenate([e.mean(axis=1), e.max(axis=1)], axis=1))
            ys.append(batch[layout.LABEL].numpy())
        x, y = np.concatenate(xs), np.concatenate(ys)
        return x[y >= 0], y[y >= 0]

    x_eval, y_eval = features(examples, layout.EVAL)
    out = {}
    for fraction, root in train_dirs.items():
        x, y = features(root, layout.TRAIN)
        scale = StandardScaler().fit(x)
        clf = LogisticRegression(C=0.1, max_iter=3000).fit(scale.transform(x), y)
        out[fraction] = float((clf.predict(scale.transform(x_eval)) == y_eval).mean())
    return out


def plot(rows: list[dict], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = [r["labelled"] for r in rows]
    for key, label, style in (("teacher_scratch", "teacher, from scratch", "o--"),
                              ("teacher_pretrained", "teacher, pre-trained backbone", "o-"),
                              ("student_scratch_teacher", "student of the scratch teacher", "s--"),
                              ("student_pretrained_teacher", "student of the pre-trained teacher", "s-"),
                              ("student_hard_labels", "student on hard labels only", "x:"),
                              ("probe_random", "linear probe, random backbone", "^:"),
                              ("probe_pretrained", "linear probe, pre-trained backbone", "^-.")):  # fmt: skip
        if all(key in r for r in rows):
            ax.plot(
                x, [r[key] for r in rows], style, label=label, alpha=0.6 if key.startswith("probe") else 1.0
            )
    ax.set_xscale("log")
    ax.set_xlabel("labelled train events")
    ax.set_ylabel("eval accuracy")
    ax.set_title("label efficiency (the rest of the events unlabelled)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10000)
    p.add_argument("--unlabelled-fraction", type=float, default=0.9)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument(
        "--fractions", default="0.05,0.1,0.25,1", help="label fractions of the labelled train events"
    )
    p.add_argument(
        "--strategy", default="single", choices=["single", "hybrid"], help="teacher and pre-training"
    )
    p.add_argument("--logical-devices", type=int, default=4, help="hybrid: logical CPU devices")
    p.add_argument("--teacher-steps", type=int, default=0, help="0: teacher.epochs / min_steps as configured")
    p.add_argument("--pretrain-steps", type=int, default=0, help="0: pretrain.epochs over train + unlabelled")
    p.add_argument("--student-epochs", type=int, default=6)
    p.add_argument("--student-min-steps", type=int, default=300)
    p.add_argument(
        "--set", action="append", default=[], help="any config override, e.g. pretrain.temperature=0.1"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="keep everything under this directory (default: a temporary one, removed)")
    p.add_argument("--out", default="bench_labels", help="directory for the table (JSON) and the plot")
    args = p.parse_args()
    fractions = [float(f) for f in args.fractions.split(",")]

    from trainer.parallel import launch

    root = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="bench-labels-")
    os.makedirs(args.out, exist_ok=True)
    cfg = config(args)
    quiet = lambda line: None  # noqa: E731
    try:
        sim = generate(args, os.path.join(root, "events"))
        print(f"simulator: {sim['events']} events ({sim['unlabelled_fraction']:.0%} unlabelled) "
              f"in {sim['seconds']} s, "
              f"{sim['events_per_second']} events/s", flush=True)  # fmt: skip
        examples, ingest_s = ingest(os.path.join(root, "events"), os.path.join(root, "ingest"))
        print(f"ingest:    {ingest_s:.0f} s", flush=True)
        began = time.perf_counter()
        pre = launch.pretrain(cfg, examples, os.path.join(root, "pretrain"),
                              export_dir=os.path.join(root, "backbone"), log=quiet)  # fmt: skip
        print(f"pretrain:  {pre['steps']} steps on {pre['events']['total']} events, "
              f"NT-Xent {pre['initial_loss']:.3f} -> "
              f"{pre['final_loss']:.3f} (chance {pre['chance_loss']:.3f}), "
              f"{time.perf_counter() - began:.0f} s",
              flush=True)  # fmt: skip
        rows = []
        for fraction in fractions:
            data = os.path.join(root, f"labels-{fraction:g}")
            counts = with_fraction(examples, fraction, data, args.seed)
            row: dict = {"fraction": fraction, **counts}
            for init, backbone in (("scratch", None), ("pretrained", os.path.join(root, "backbone"))):
                run = os.path.join(data, f"teacher-{init}")
                t0 = time.perf_counter()
                rep = launch.train(
                    cfg, data, run, export_dir=os.path.join(run, "model"), log=quiet, init_backbone=backbone
                )
                row[f"teacher_{init}"] = rep["final_eval_accuracy"]
                row[f"teacher_{init}_steps"] = rep["steps_trained"]
                s = student(data, os.path.join(run, "model"), os.path.join(data, f"student-{init}"), cfg)
                row[f"student_{init}_teacher"] = s["distilled"]
                row["student_hard_labels"] = s[
                    "scratch"
                ]  # the same for both teachers (hard labels, same seed)
                row[f"seconds_{init}"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(f"labels {fraction:>5.0%} ({counts['labelled']} labelled): "
                  f"teacher {row['teacher_scratch']:.3f} -> "
                  f"{row['teacher_pretrained']:.3f} pre-trained; "
                  f"student {row['student_scratch_teacher']:.3f} -> "
                  f"{row['student_pretrained_teacher']:.3f}", flush=True)  # fmt: skip
        dirs = {r["fraction"]: os.path.join(root, f"labels-{r['fraction']:g}") for r in rows}
        for init, backbone in (("random", None), ("pretrained", os.path.join(root, "backbone"))):
            for fraction, accuracy in linear_probe(examples, dirs, backbone, cfg).items():
                next(r for r in rows if r["fraction"] == fraction)[f"probe_{init}"] = accuracy
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    header = (f"{'labels':>7} {'labelled':>8} | {'probe':>6} {'probe+pt':>8} | "
              f"{'teacher':>7} {'teacher+pt':>10} | "
              f"{'student':>7} {'student+pt':>10} {'hard only':>9}")  # fmt: skip
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['fraction']:>7.0%} {r['labelled']:>8} | "
              f"{r['probe_random']:>6.3f} {r['probe_pretrained']:>8.3f} | "
              f"{r['teacher_scratch']:>7.3f} {r['teacher_pretrained']:>10.3f} | "
              f"{r['student_scratch_teacher']:>7.3f} {r['student_pretrained_teacher']:>10.3f} "
              f"{r['student_hard_labels']:>9.3f}")  # fmt: skip
    print(
        "probe: a linear classifier on the frozen backbone (random weights / pre-trained); "
        "+pt: pre-trained backbone"
    )
    full = next((r for r in rows if r["fraction"] == 1.0), None)
    tenth = next((r for r in rows if abs(r["fraction"] - 0.1) < 1e-9), None)
    target = None
    if full and tenth:
        ratio = tenth["student_pretrained_teacher"] / full["student_pretrained_teacher"]
        ratio_scratch = tenth["student_scratch_teacher"] / full["student_scratch_teacher"]
        target = {"ratio_to_full": ratio, "reaches_90_percent": ratio >= 0.9,
                  "beats_scratch_teacher_student":
                      tenth["student_pretrained_teacher"] > tenth["student_scratch_teacher"],
                  "ratio_to_full_without_pretraining": ratio_scratch}  # fmt: skip
        print(f"\n10% labels: the pre-trained teacher's student is at {ratio:.1%} of the 100%-label student "
              f"(target >= 90%: {'met' if target['reaches_90_percent'] else 'NOT met'}); "
              f"vs the scratch teacher's student {tenth['student_scratch_teacher']:.3f}: "
              f"{'beats it' if target['beats_scratch_teacher_student'] else 'does NOT beat it'}"
              f"; without pre-training the 10% student is at {ratio_scratch:.1%} "
              "of its 100% run")  # fmt: skip
    result = {"simulator": sim, "ingest_seconds": round(ingest_s, 1), "pretrain": {k: pre[k] for k in (
        "steps", "events", "initial_loss", "final_loss", "chance_loss", "timing")},
        "rows": rows, "target": target, "args": vars(args)}  # fmt: skip
    with open(os.path.join(args.out, "bench_labels.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(
        f"table: {os.path.join(args.out, 'bench_labels.json')}\n"
        f"plot:  {plot(rows, os.path.join(args.out, 'label_efficiency.png'))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
