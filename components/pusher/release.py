"""What the EventPusher decides and does, free of TFX so it is easy to call and test.

``reasons_not_to_push`` is the gate (stock Pusher semantics: the ModelBlessing's and the
InfraBlessing's ``blessed`` custom property, plus: the blessing must be about this very
model). ``push_all`` checks every source first and only then pushes, so a missing file never
leaves half a release behind; each destination is itself atomic (``components.pusher.push``).

A release is three versions in three directories, and no rename spans them. So every part
is staged first (copied, fsynced, its number claimed), a journal names each part's staged and
final directory, and they are committed student, teacher, then mobile: the student version,
the one clients follow, is the commit point, and the mobile release that names it comes after
it, so a visible mobile release always names a student version that exists. A push killed
before the student commit leaves nothing visible; one killed after it is rolled forward by the
next push (the staged parts the journal names are renamed into place) and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from components.pusher.push import (
    SAVED_MODEL_PB,
    SAVED_MODEL_PBTXT,
    STALE_TMP_SECONDS,
    STATE_DIR,
    Staged,
    rename_noreplace,
    stage_saved_model,
    stage_tflite,
)
from contract import files
from contract.errors import UserError
from serving.versions import model_dir as resolve_model_dir
from serving.warmup import predict_logs

TEACHER_SUFFIX = "-teacher"
JOURNAL_DIR = "releases"  # <serving_base>/<model_name>/.eventpipe-push/releases/<student version>.json
ROLLED_BACK_PREFIX = ".rolled-back-"
ROLES = ("student", "teacher", "mobile")  # the commit order; the student is the commit point


def reasons_not_to_push(
    *,
    blessed: int | None,
    infra_blessed: int | None,
    blessing_model_id: int | None,
    blessing_model_uri: str | None,
    model_id: int | None,
    model_uri: str,
) -> list[str]:
    """Every reason the model must not be pushed ([] means push).
    ``None``: property absent/input not given."""
    reasons = []
    if blessed != 1:
        reasons.append("the model is not blessed (ModelBlessing blessed != 1)")
    if infra_blessed is not None and infra_blessed != 1:
        reasons.append("the model did not pass serving validation (InfraBlessing blessed != 1)")
    if blessing_model_id and model_id and blessing_model_id != model_id:
        reasons.append(f"the blessing is for model artifact {blessing_model_id}, not {model_id}")
    elif blessing_model_uri and os.path.normpath(blessing_model_uri) != os.path.normpath(model_uri):
        reasons.append(f"the blessing is for {blessing_model_uri}, not {model_uri}")
    return reasons


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def lite_metrics(lite_dir: str) -> dict[str, Any]:
    """Accuracy, agreement and size of each TFLite variant from the LiteConverter's report."""
    report = _read_json(os.path.join(lite_dir, files.LITE_REPORT))
    if report is None:
        return {}
    # Informational (it goes into release.json): a partial report gives what it has, and whether
    # the models themselves are there is PushPlan.check's to refuse.
    tflite = report.get("tflite") or {}
    out: dict[str, Any] = {"report": files.LITE_REPORT}
    for variant in ("int8", "float16"):
        entry = tflite.get(variant)
        if isinstance(entry, dict):
            picked = {k: v for k, v in entry.items() if k == "accuracy" or k.startswith("agreement")}
            picked["bytes"] = (entry.get("bytes") or {}).get("raw")
            out[variant] = picked
    if isinstance(tflite.get("parity"), dict):
        out["parity"] = tflite["parity"]
    return out


def gate_metrics(blessing_dir: str) -> dict[str, Any]:
    """Teacher/student accuracy from ReleaseGate's verdict, if it wrote one."""
    verdict = _read_json(os.path.join(blessing_dir, files.VERDICT)) or {}
    keys = ("teacher_accuracy", "student_accuracy", "student_vs_teacher")
    return {k: verdict[k] for k in keys if k in verdict}


@dataclass
class PushPlan:
    """Everything one release pushes; ``check`` refuses before anything is written."""

    model_name: str
    student_dir: str
    serving_base: str
    teacher_dir: str | None = None
    lite_dir: str | None = None
    mobile_base: str = ""
    release: dict[str, Any] = field(default_factory=dict)
    warmup_frames: Any = None  # [N, K] encoded eval events: each SavedModel's warm-up requests

    def check(self) -> None:
        if not self.serving_base:
            raise UserError("EventPusher needs serving_base (run.serving_base)")
        for what, path in (("student", self.student_dir), ("teacher", self.teacher_dir)):
            if path is not None and not (
                os.path.isfile(os.path.join(path, SAVED_MODEL_PB))
                or os.path.isfile(os.path.join(path, SAVED_MODEL_PBTXT))
            ):
                raise UserError(f"the {what} model {path!r} is not a SavedModel; nothing pushed")
        if self.lite_dir is not None:
            if not self.mobile_base:
                raise UserError("EventPusher got TFLite models but no mobile_base (run.mobile_base)")
            if not os.path.isfile(os.path.join(self.lite_dir, files.TFLITE_INT8)):
                raise UserError(
                    f"no int8 TFLite model ({files.TFLITE_INT8}) in {self.lite_dir}; nothing pushed"
                )


def _journal_dir(plan: PushPlan) -> str:
    return os.path.join(resolve_model_dir(plan.serving_base, plan.model_name), STATE_DIR, JOURNAL_DIR)


def _write_json(path: str, content: dict[str, Any]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _hide(path: str) -> str | None:
    """Rename a committed version out of the servers' sight; the new path (None if it is gone)."""
    if not os.path.isdir(path):
        return None
    hidden = os.path.join(os.path.dirname(path), ROLLED_BACK_PREFIX + os.path.basename(path))
    rename_noreplace(path, hidden)
    return hidden


def _alive(path: str, journal: dict[str, Any]) -> bool:
    """Whether the pusher that wrote the journal at ``path`` may still be committing it."""
    if journal.get("host") != socket.gethostname():  # cannot ask another host: trust it for a while
        return os.path.getmtime(path) > time.time() - STALE_TMP_SECONDS
    pid = int(journal["pid"])
    if pid == os.getpid():
        return False  # this process is not inside another push
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _roll_back(path: str, journal: dict[str, Any], why: str) -> None:
    """Drop a release whose student was never committed: nothing of it is visible."""
    for role in ROLES:
        staged = journal.get(f"{role}_tmp")
        if staged and os.path.isdir(staged):
            shutil.rmtree(staged, ignore_errors=True)
    _write_json(path, {**journal, "state": "rolled_back", "why": why})


def _roll_forward(path: str, journal: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Finish a release whose pusher died after its student commit: (versions committed, hidden).

    A part whose staged directory is gone cannot be finished: then the whole release is hidden
    (student included), so that no student version stays without its teacher and mobile release.
    """
    missing = [role for role in ROLES if journal.get(role) and not os.path.isdir(journal[role])
               and not os.path.isdir(journal.get(f"{role}_tmp") or "")]  # fmt: skip
    if missing:
        hidden = [h for h in (_hide(journal[role]) for role in ROLES if journal.get(role)) if h]
        why = f"the pusher died after the student commit and the staged {', '.join(missing)} is gone"
        _write_json(path, {**journal, "state": "rolled_back", "why": why, "hidden": hidden})
        return [], hidden
    finished = []
    for role in ROLES:
        if journal.get(role) and not os.path.isdir(journal[role]):
            rename_noreplace(journal[f"{role}_tmp"], journal[role])
            finished.append(journal[role])
    _write_json(path, {**journal, "state": "committed", "rolled_forward": finished})
    return finished, []


def recover_interrupted_releases(plan: PushPlan) -> dict[str, list[str]]:
    """Settle the releases whose pusher died while committing them (see the module docstring).

    Returns the versions rolled forward and the ones hidden (``{"rolled_forward": [...],
    "rolled_back": [...]}``), empty lists when there was nothing to settle.
    """
    settled: dict[str, list[str]] = {"rolled_forward": [], "rolled_back": []}
    directory = _journal_dir(plan)
    if not os.path.isdir(directory):
        return settled
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        with open(path, encoding="utf-8") as f:
            journal = json.load(f)
        if journal.get("state") != "committing" or _alive(path, journal):
            continue
        if os.path.isdir(journal["student"]):
            finished, hidden = _roll_forward(path, journal)
            settled["rolled_forward"] += finished
            settled["rolled_back"] += hidden
        else:
            _roll_back(path, journal, "the pusher died before the student version was committed")
    return settled


def _warmup(plan: PushPlan, model_name: str) -> list[Any] | None:
    return predict_logs(plan.warmup_frames, model_name) if plan.warmup_frames is not None else None


def push_all(plan: PushPlan) -> list[dict[str, Any]]:
    """Push student, teacher and TFLite release as one release; one summary per destination."""
    plan.check()
    started = time.monotonic()
    recovered = recover_interrupted_releases(plan)
    staged: list[tuple[str, Staged]] = []
    committed = False
    try:
        student = stage_saved_model(
            plan.student_dir, plan.serving_base, plan.model_name, _warmup(plan, plan.model_name)
        )
        staged.append(("student", student))
        if plan.teacher_dir is not None:
            teacher_name = plan.model_name + TEACHER_SUFFIX
            staged.append(
                (
                    "teacher",
                    stage_saved_model(
                        plan.teacher_dir, plan.serving_base, teacher_name, _warmup(plan, teacher_name)
                    ),
                )
            )
        if plan.lite_dir is not None:
            int8 = os.path.join(plan.lite_dir, files.TFLITE_INT8)
            float16 = os.path.join(plan.lite_dir, files.TFLITE_FLOAT16)
            float16 = float16 if os.path.isfile(float16) else None
            release = {
                **plan.release,
                "serving": {"model_name": plan.model_name, "version": student.version, "path": student.path},
            }
            mobile = stage_tflite(
                int8, plan.mobile_base, plan.model_name, release,
                variants={files.TFLITE_FLOAT16: float16} if float16 else None,
            )  # fmt: skip
            staged.append(("mobile", mobile))
        parts = dict(staged)
        os.makedirs(_journal_dir(plan), exist_ok=True)
        journal_path = os.path.join(_journal_dir(plan), f"{student.version}.json")
        journal = {"state": "committing", "pid": os.getpid(), "host": socket.gethostname(),
                   **{role: part.path for role, part in parts.items()},
                   **{f"{role}_tmp": part.tmp for role, part in parts.items()}}  # fmt: skip
        _write_json(journal_path, journal)
        try:
            parts["student"].commit()  # the commit point
        except BaseException as e:
            _roll_back(journal_path, journal, f"the student commit failed: {e!r}")
            raise
        committed = True  # from here on a failure leaves the staged parts for the next push to commit
        for role in ROLES[1:]:
            if role in parts:
                parts[role].commit()
        _write_json(journal_path, {**journal, "state": "committed"})
    finally:
        if not committed:
            for _, part in staged:
                part.discard()
    seconds = round(time.monotonic() - started, 3)
    pushed = [{"role": role, **part.summary, "seconds": seconds} for role, part in staged]
    for how, paths in recovered.items():
        if paths:
            pushed[0][how] = paths
    return pushed
