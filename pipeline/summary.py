"""After a run: gather each stage's own report into report.json and print the few lines a
person reads."""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any

from components.gates.accuracy import overall_accuracy
from contract import files
from contract.config import Config
from trainer.teacher.length import steps_text


def load_json(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _uri(found: dict[str, Any], node: str, key: str) -> str | None:
    outputs = found.get(node)
    if outputs is None or not outputs.uris.get(key):
        return None
    return outputs.uris[key][0]


def teacher_section(found: dict[str, Any]) -> dict[str, Any] | None:
    run_dir, model_dir = _uri(found, "TeacherTrainer", "model_run"), _uri(found, "TeacherTrainer", "model")
    if run_dir is None or model_dir is None:
        return None
    train = load_json(os.path.join(run_dir, files.TRAIN_REPORT)) or {}
    section: dict[str, Any] = {
        "model": os.path.join(model_dir, files.SERVING_MODEL_DIR),
        "strategy": train.get("strategy"),
        "mesh": train.get("mesh"),
        "fc_layout": train.get("fc_layout"),
        "devices": train.get("devices"),
        "steps": train.get("steps_trained", train.get("steps")),
        "planned_steps": train.get("steps"),
        "stopped_early": train.get("stopped_early"),
        "length": steps_text(train),
        "epochs": train.get("epochs"),
        "best": train.get("best"),
        "params": (train.get("parameters") or {}).get("total"),
        "train_eval_accuracy": train.get("final_eval_accuracy"),
        "examples_per_second": (train.get("timing") or {}).get("examples_per_second"),
        "final_loss": (train.get("losses") or [None])[-1],
        "train_report": os.path.join(run_dir, files.TRAIN_REPORT),
        "plots": train.get("plots", {}),
        "tensorboard": os.path.join(run_dir, "tensorboard"),
    }
    evaluation = _uri(found, "TeacherEvaluator", "evaluation")
    if evaluation:
        section["accuracy"] = overall_accuracy(evaluation)
        blessing = _uri(found, "TeacherEvaluator", "blessing")
        section["tfma_blessed"] = bool(blessing and os.path.exists(os.path.join(blessing, "BLESSED")))
    return section


def pretrain_section(found: dict[str, Any]) -> dict[str, Any] | None:
    """The Pretrainer's part of report.json: loss curve, time, events used, where the backbone went."""
    run_dir, model_dir = _uri(found, "Pretrainer", "model_run"), _uri(found, "Pretrainer", "model")
    pre = load_json(os.path.join(run_dir, files.PRETRAIN_REPORT)) if run_dir else None
    if not pre:
        return None
    keys = ("strategy", "mesh", "steps", "epochs", "batch", "temperature", "augmentations", "pairs",
            "negatives", "cameras", "projection_units", "events", "losses", "initial_loss", "final_loss",
            "chance_loss", "backbone_relative_change", "timing", "parameters", "plots")  # fmt: skip
    return {
        **{k: pre.get(k) for k in keys},
        "seconds": (pre.get("timing") or {}).get("wall_seconds"),
        "backbone": os.path.join(model_dir, files.SERVING_MODEL_DIR) if model_dir else None,
        "pretrain_report": os.path.join(run_dir, files.PRETRAIN_REPORT),
    }


def collect(found: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """report.json sections from the stages that ran: each stage's own report, merged."""
    sections: dict[str, Any] = {}
    pretrain = pretrain_section(found)
    if pretrain:
        sections["pretrain"] = pretrain
    teacher = teacher_section(found)
    lite_dir = _uri(found, "LiteConverter", "lite")
    lite = load_json(os.path.join(lite_dir, files.LITE_REPORT)) if lite_dir else None
    if lite:
        teacher = {**(lite.get("teacher") or {}), **(teacher or {})}
        sections["student"] = lite["student"]
        sections["tflite"] = lite["tflite"]
        sections["comparison"] = lite.get("comparison")
        sections["plots"] = lite.get("plots")
        sections["best_frame_examples"] = lite.get("best_frame_examples")
    if teacher:
        sections["teacher"] = teacher
    distiller_run = _uri(found, "Distiller", "model_run")
    if distiller_run and os.path.isdir(os.path.join(distiller_run, "tensorboard")):
        sections.setdefault("student", {})["tensorboard"] = os.path.join(distiller_run, "tensorboard")
    student_eval = _uri(found, "StudentEvaluator", "evaluation")
    if student_eval:
        sections.setdefault("student", {})["tfma_accuracy"] = overall_accuracy(student_eval)
    gate = _uri(found, "ReleaseGate", "blessing")
    if gate:
        sections["release"] = load_json(os.path.join(gate, files.VERDICT))
    validator = _uri(found, "ServingValidator", "blessing")
    if validator:
        sections["serving_validation"] = load_json(os.path.join(validator, files.VALIDATION))
    pushed = _uri(found, "EventPusher", "pushed_model")
    if pushed:
        sections["push"] = load_json(os.path.join(pushed, files.PUSH_RECORD))
    return sections


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def p50_ms(variant: dict[str, Any]) -> float | None:
    """Per-event p50 latency of a variant in its own format (batch 1, 1 thread)."""
    latency = (variant.get("latency") or {}).get(variant.get("format", ""), {})
    return latency.get("p50_ms")


def print_summary(rep: dict[str, Any], report_path: str, html_path: str | None = None) -> None:
    """The human summary at the end of ``eventpipe run`` (``html_path``: report.html, if written)."""
    lines = [
        *_ingest_lines(rep), *_pretrain_lines(rep), *_teacher_lines(rep), *_student_lines(rep),
        *_tflite_lines(rep), *_release_lines(rep), *_plot_lines(rep), *_served_lines(rep), *next_steps(rep),
        f"report     {report_path}",
    ]  # fmt: skip
    if html_path:
        lines.append(f"report     {html_path} (open it in a browser)")
    print("\n".join(lines))


def _ingest_lines(rep: dict[str, Any]) -> list[str]:
    ev = rep.get("events")
    if not ev:
        return []
    reasons = ", ".join(f"{k} {v}" for k, v in ev["rejected_by_reason"].items()) or "none"
    lines = [
        f"events     read {ev['read']} = accepted {ev['accepted']} + rejected {ev['rejected']} ({reasons}); "
        f"train {ev['splits'].get('train', 0)}, eval {ev['splits'].get('eval', 0)}, "
        f"unlabelled {ev['unlabelled']}"
    ]
    if ev.get("ignored_files"):
        why = "; ".join(f"{n} {reason}" for reason, n in ev["ignored_by_reason"].items())
        ignored = "1 file" if ev["ignored_files"] == 1 else f"{ev['ignored_files']} files"
        lines.append(f"ignored    {ignored} under --data not read: {why}")
    lines.append(f"quarantine {rep['quarantine']}")
    return lines


def _pretrain_lines(rep: dict[str, Any]) -> list[str]:
    pre = rep.get("pretrain")
    if not pre:
        return []
    return [
        f"pretrain   NT-Xent {_fmt(pre.get('initial_loss'))} -> {_fmt(pre.get('final_loss'))} "
        f"(chance {_fmt(pre.get('chance_loss'))}), "
        f"{pre.get('steps')} steps on {(pre.get('events') or {}).get('total')} "
        f"events, {pre.get('strategy')}, {_fmt(pre.get('seconds'), '.0f')} s"
    ]


def _teacher_lines(rep: dict[str, Any]) -> list[str]:
    t = rep.get("teacher")
    if not t:
        return []
    mesh = ", ".join(f"{k}={v}" for k, v in (t.get("mesh") or {}).items())
    # A multiworker (or multi-client hybrid) report lists the chief's own devices; the mesh
    # already counts workers (clients).
    several = t.get("strategy") == "multiworker" or "clients" in (t.get("mesh") or {})
    where = "" if several else f" on {len(t.get('devices') or [])} devices"
    length = t["length"]  # teacher_section words it once
    detail = [f"{t['epochs']:.1f} epochs" if t.get("epochs") is not None else "",
              f"best eval loss at step {t['best']['step']}" if t.get("best") else ""]  # fmt: skip
    if any(detail):
        length += f" ({', '.join(x for x in detail if x)})"
    return [
        f"teacher    accuracy {_fmt(t.get('accuracy'))}, {t.get('params') or 0:,} params, "
        f"{t.get('strategy')} ({mesh}){where}, {length}, p50 {_fmt(p50_ms(t), '.2f')} ms/event"
    ]


STUDENT_LABELS = {"scratch": "scratch (hard labels, no teacher)", "float": "distilled", "pruned": "pruned",
                  "qat": "QAT (production)"}  # fmt: skip


def _student_lines(rep: dict[str, Any]) -> list[str]:
    """Every student variant, what distillation bought, and the best-frame line with its baselines."""
    lines = []
    student = rep.get("student") or {}
    for name, label in STUDENT_LABELS.items():
        v = student.get(name)
        if v:
            sparsity = (v.get("sparsity") or {}).get("all_weights")
            lines.append(
                f"student    {label}: accuracy {_fmt(v.get('accuracy'))}, {v.get('params') or 0:,} params"
                + (f", sparsity {sparsity:.2f}" if sparsity is not None else "")
                + f", p50 {_fmt(p50_ms(v), '.2f')} ms/event"
            )
    comparison = rep.get("comparison") or {}
    if comparison.get("kd_gain") is not None:
        lines.append(
            f"distill    kd_gain {comparison['kd_gain']:+.1f} points (distilled vs scratch); teacher "
            f"{comparison.get('teacher_over_scratch_points', float('nan')):+.1f} points over scratch"
        )
    production = student.get(student.get("production", "").replace("student_", "")) or {}
    t = rep.get("teacher")
    if t and t.get("best_frame_events"):
        lines.append("attention  " + best_frame_line(t, production, comparison))
    return lines


def _tflite_lines(rep: dict[str, Any]) -> list[str]:
    lines = []
    for name in ("int8", "float16"):
        v = (rep.get("tflite") or {}).get(name)
        if v:
            agreement = (v.get("parity") or {}).get("agreement")
            lines.append(
                f"tflite     {name}: {v['bytes']['raw']:,} bytes, accuracy {_fmt(v.get('accuracy'))}, "
                f"agrees with the float student on {_fmt(agreement, '.1%')}, "
                f"p50 {_fmt(p50_ms(v), '.2f')} ms/event"
            )
    return lines


def _release_lines(rep: dict[str, Any]) -> list[str]:
    lines = []
    release = rep.get("release")
    if release:
        verdict = (
            "BLESSED" if release.get("blessed") else "NOT blessed: " + "; ".join(release.get("problems", []))
        )
        lines.append(f"release    {verdict}")
    push = rep.get("push")
    if push:
        for dest in push.get("destinations", []):
            lines.append(f"pushed     {dest['role']}: {dest['path']} (version {dest.get('version')})")
        if not push.get("pushed"):
            lines.append("pushed     nothing: " + "; ".join(push.get("reasons", [])))
    return lines


def _plot_lines(rep: dict[str, Any]) -> list[str]:
    curve = ((rep.get("teacher") or {}).get("plots") or {}).get("training_curve")
    pre_curve = ((rep.get("pretrain") or {}).get("plots") or {}).get("pretrain_curve")
    paths = [p for p in (pre_curve, curve) if p] + list((rep.get("plots") or {}).values())
    return [f"plot       {path}" for path in paths]


def _served_lines(rep: dict[str, Any]) -> list[str]:
    served = rep.get("serving_check")
    if not served:
        return []
    if not served.get("ok"):
        return [f"served     FAILED: {served.get('error')}"]
    return [
        f"served     {served['url']} -> event {served['event_id']} (label {served['label']}): "
        f"{served['predicted']} p={served['probability']:.2f}, best frame {served['best_frame']}, "
        f"{served['milliseconds']} ms"
    ]


BEST_FRAME_BASELINES = (  # (comparison key, how the rule names a frame)
    ("best_frame_first_frame_baseline", "always the first frame"),
    ("best_frame_random_baseline", "random"),
    ("best_frame_confidence_baseline", "the frame alone most confident, teacher"),
)


def best_frame_line(teacher: dict[str, Any], production: dict[str, Any], comparison: dict[str, Any]) -> str:
    """Best-frame accuracy of both models beside the rules' scores; a model below the best rule is marked
    (the summary's ``attention`` line and report.html's note)."""
    rules = {label: comparison[key] for key, label in BEST_FRAME_BASELINES if comparison.get(key) is not None}
    best_rule = max(rules.values(), default=None)

    def shown(value: Any) -> str:
        below = value is not None and best_rule is not None and value < best_rule
        return _fmt(value) + (" [below a baseline]" if below else "")

    baselines = ", ".join(f"{label}: {_fmt(v)}" for label, v in rules.items())
    return (
        f"best frame named right on {teacher['best_frame_events']} eval events with a known one: teacher "
        f"{shown(teacher.get('best_frame_accuracy'))}, "
        f"student {shown(production.get('best_frame_accuracy'))} "
        f"({baselines})"
    )


def venv_tool(name: str) -> str:
    """``name`` as this interpreter's environment has it (``.venv/bin/eventpipe`` from the
    checkout), so the printed line runs without activating the venv."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        return name
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def next_steps(rep: dict[str, Any]) -> list[str]:
    """Copy-paste lines: serve what was pushed, query it with a real event, open the curves."""
    lines = []
    served = rep.get("serving_check") or {}
    if served.get("ok") and served.get("serve_command"):
        command = " ".join(shlex.quote(a) for a in served["serve_command"])
        lines.append(f"next       serve it:   {command}")
        lines.append(
            "next       query it:   curl -s "
            f"localhost:{served['rest_port']}/v1/models/{served['model_name']}:predict "
            f"-d @{shlex.quote(served['request_file'])}"
        )
    runs = {
        name: logs
        for name, logs in (("teacher", (rep.get("teacher") or {}).get("tensorboard")),
                           ("student", (rep.get("student") or {}).get("tensorboard")))
        if logs
    }  # fmt: skip
    if len(runs) == 1:
        lines.append(
            f"next       curves:     {venv_tool('tensorboard')} "
            f"--logdir {shlex.quote(next(iter(runs.values())))}"
        )
    elif runs:  # one TensorBoard, each model's runs under its name
        spec = ",".join(f"{name}:{logs}" for name, logs in runs.items())
        lines.append(f"next       curves:     {venv_tool('tensorboard')} --logdir_spec {shlex.quote(spec)}")
    return lines
