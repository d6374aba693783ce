"""Paired accuracy on a large held-out set: every model of one run scored on the same unseen events.

A run's own eval split (~340 events on the demo) resolves about 2 points; the differences the
project promises (teacher over scratch student, distillation's gain, int8 against its float
twin) are 1-3 points. So each simulated run is also scored on ``count`` further events of its
simulator seed (indices after the run's own: the same cameras and classes, events the run never
saw), and every comparison is paired: ``d_i = right_a(i) - right_b(i)`` on the same events, with a
95% interval ``mean(d) +- 1.96 sd(d) / sqrt(n)``.

Used by bench_quality.py; TensorFlow and the simulator are imported inside the functions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

# (name, the model's entry in report.json) for every model scored; best frame is scored too.
MODELS = (
    ("teacher", ("teacher",)),
    ("scratch", ("student", "scratch")),
    ("distilled", ("student", "float")),
    ("pruned", ("student", "pruned")),
    ("qat", ("student", "qat")),
    ("int8", ("tflite", "int8")),
)
PAIRS = (  # (a, b): a's accuracy minus b's, on the same events
    ("teacher", "scratch"),
    ("distilled", "scratch"),
    ("qat", "scratch"),
    ("int8", "scratch"),
    ("int8", "qat"),
)
Z95 = 1.96


def dig(d: Any, *keys: str) -> Any:
    """d[k1][k2]...; None when any level is missing or not a dict."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def write_heldout(directory: str, seed: int, first: int, count: int, events_in_run: int) -> dict[str, Any]:
    """Render events ``first .. first+count-1`` of the demo simulator at ``seed`` as a JSONL set.

    ``events_in_run``: the run's ``--events``, so event ids have the run's width. An event
    depends only on the simulator's content settings and its index, so these are the events a
    larger ``eventpipe generate`` would have written after the run's own.
    """
    import dataclasses

    from contract.config import SimulatorConfig
    from simulator import writer
    from simulator.scenes import archetypes_for, render_event

    cfg = dataclasses.replace(SimulatorConfig(), seed=seed, events=events_in_run)
    arch = archetypes_for(cfg.classes)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(os.path.join(directory, writer.FRAMES_DIR))
    labelled = 0
    with open(os.path.join(directory, "heldout.jsonl"), "w", encoding="utf-8") as manifest:
        for index in range(first, first + count):
            event = render_event(cfg, index, arch)
            labelled += event.label is not None
            record = writer.manifest_record(event, cfg.classes, writer.save_frames(event, directory))
            manifest.write(json.dumps(record) + "\n")
    return {"events": count, "labelled": labelled, "first_index": first, "classes": list(cfg.classes)}


def heldout_files(examples_uri: str) -> list[str]:
    """Every split of the held-out Examples artifact: none of it was trained on."""
    from contract import layout

    splits = (layout.TRAIN, layout.EVAL, layout.UNLABELLED_SPLIT)
    return sorted(f for split in splits for f in layout.split_files(examples_uri, split))


def _predictor(entry: dict[str, Any]) -> Any:
    from trainer import evaluate
    from trainer.models.student import load_keras

    path, kind = entry.get("path"), entry.get("format")
    if kind == "savedmodel":
        return evaluate.saved_model_predictor(path)
    if kind == "keras":
        return evaluate.keras_predictor(load_keras(path))
    if kind == "tflite":
        return evaluate.tflite_predictor(path)
    raise ValueError(f"unknown model format {kind!r} for {path}")


def paired(a: Any, b: Any) -> dict[str, Any]:
    """Mean of ``a - b`` (0/1 per event) over the same events, with its 95% normal interval."""
    import numpy as np

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    if n < 2:
        return {"mean": None, "low": None, "high": None, "events": n}
    mean, half = float(d.mean()), Z95 * float(d.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "events": n}


def score_run(report: dict[str, Any], examples_uri: str) -> dict[str, Any]:
    """Accuracy, best-frame accuracy and the paired differences of a run's models on the held-out set."""
    from contract.layout import EventSpec
    from trainer.evaluate import predict_split
    from trainer.lite.convert import best_frame_baselines

    spec = EventSpec.load(examples_uri)
    run_classes = dig(report, "tflite", "confusion_matrix", "classes")
    if run_classes and list(run_classes) != list(spec.classes):
        raise ValueError(f"held-out classes {spec.classes} differ from the run's {run_classes}")
    predictors = {name: _predictor(dig(report, *keys)) for name, keys in MODELS if dig(report, *keys)}
    preds = predict_split(heldout_files(examples_uri), spec, predictors, desc="held-out")
    labelled = next(iter(preds.values())).labels >= 0
    right = {name: (p.predicted == p.labels)[labelled] for name, p in preds.items()}
    out: dict[str, Any] = {"events": int(len(labelled)), "labelled_events": int(labelled.sum())}
    out["accuracy"] = {name: float(r.mean()) for name, r in right.items()}
    out["best_frame"] = {name: p.best_frame_accuracy() for name, p in preds.items()}
    first = next(iter(preds.values()))
    out["best_frame_events"] = first.best_frame_events()
    out.update(best_frame_baselines(first, spec.frames))  # the same rules the LiteConverter reports
    out["paired"] = {f"{a}-{b}": paired(right[a], right[b]) for a, b in PAIRS if a in right and b in right}
    out["correct"] = {name: r.astype(int).tolist() for name, r in right.items()}  # for pooling over seeds
    return out


def pooled(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The paired differences over every seed's held-out events together."""
    import numpy as np

    out = {}
    for a, b in PAIRS:
        runs = [s for s in per_seed if a in s.get("correct", {}) and b in s.get("correct", {})]
        if runs:
            out[f"{a}-{b}"] = paired(
                np.concatenate([s["correct"][a] for s in runs]),
                np.concatenate([s["correct"][b] for s in runs]),
            )
    return out


def interval(p: dict[str, Any] | None) -> str:
    """``+1.2 [+0.4, +2.0] pts`` from a ``paired`` result."""
    if not p or p.get("mean") is None:
        return "-"
    return f"{100 * p['mean']:+.1f} [{100 * p['low']:+.1f}, {100 * p['high']:+.1f}] pts"
