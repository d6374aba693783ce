"""EventPusher component: pushes only what ReleaseGate (and the ServingValidator) blessed.

Stock Pusher semantics — nothing is pushed unless the ModelBlessing's ``blessed`` custom
property is 1 (and the InfraBlessing's, when given) — with three destinations instead of
one: the student SavedModel as ``<serving_base>/<model_name>/<version>/`` (with TF Serving's
warm-up file of real eval events, ``serving.warmup_events``), the teacher as
``<serving_base>/<model_name>-teacher/<version>/`` and the int8 TFLite model (plus the
float16 one) as ``<mobile_base>/<model_name>/<version>/model.tflite`` with ``release.json``.

Output: a standard PushedModel with the stock Pusher's custom properties ``pushed`` (0/1),
``pushed_version`` and ``pushed_destination`` (the student's serving version), plus
``teacher_version`` and ``mobile_version``; ``push.json`` in its uri lists every destination
or, when nothing was pushed, every reason why. Pushing is idempotent per model artifact: a
re-run that blesses the same student again (a ledger under ``<model>/.eventpipe-push/``
remembers what went where) reports the existing versions instead of minting new ones.
"""

import json
import logging
import os
import time

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components.artifacts import LiteModels
from components.pusher.push import STATE_DIR
from components.pusher.release import (
    PushPlan,
    gate_metrics,
    lite_metrics,
    push_all,
    reasons_not_to_push,
)
from contract import files, layout
from contract.config import ServingConfig, section_from_json


def _int_property(artifact, name):
    """A custom int property, or None where the artifact does not carry it."""
    if artifact is None or not artifact.has_custom_property(name):
        return None
    return artifact.get_int_custom_property(name)


def _ledger(serving_base, model_name):
    return os.path.join(serving_base, model_name, STATE_DIR, "pushed-models.json")


def _already_pushed(serving_base, model_name, model_uri):
    """The earlier push of this exact model artifact, if its versions are all still in place."""
    path = _ledger(serving_base, model_name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        entry = json.load(f).get(model_uri)
    if entry and all(os.path.isdir(d["path"]) for d in entry["destinations"]):
        return entry
    return None


def _remember_push(serving_base, model_name, model_uri, destinations):
    path = _ledger(serving_base, model_name)
    ledger = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            ledger = json.load(f)
    ledger[model_uri] = {"destinations": destinations}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(ledger, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def _serving_dir(model):
    return path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))


@component
def EventPusher(
    model: InputArtifact[standard_artifacts.Model],
    model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    pushed_model: OutputArtifact[standard_artifacts.PushedModel],
    serving_base: Parameter[str],
    mobile_base: Parameter[str],
    serving_config: Parameter[str],
    teacher_model: InputArtifact[standard_artifacts.Model] = None,
    lite: InputArtifact[LiteModels] = None,
    infra_blessing: InputArtifact[standard_artifacts.InfraBlessing] = None,
    examples: InputArtifact[standard_artifacts.Examples] = None,
    pipeline_run_id: Parameter[str] = "",
) -> None:
    """Pushes the blessed student (and teacher, TFLite release), or records why not.

    ``serving_config``: the ``serving`` config section (``contract.config.section_json``), for the
    model name and ``warmup_events``; ``examples``: where the warm-up requests' eval events come
    from; ``pipeline_run_id``: recorded in every release (the run that produced it)."""
    serving = section_from_json(ServingConfig, serving_config)
    reasons = _reasons(model, model_blessing, infra_blessing)
    record = _record(serving.model_name, pipeline_run_id, model, model_blessing, infra_blessing, reasons)
    already = _already_pushed(serving_base, serving.model_name, model.uri) if not reasons else None
    if already is not None:
        # A re-run that re-blesses the same student (e.g. now judged against itself as the last
        # blessed baseline) must not mint a duplicate version: point at the one already there.
        record.update(destinations=already["destinations"], pushed=True, already_pushed=True)
    elif not reasons:
        plan = _plan(serving, serving_base, mobile_base, pipeline_run_id, model, model_blessing,
                     teacher_model, lite, examples)  # fmt: skip
        record.update(destinations=push_all(plan), pushed=True)
        _remember_push(serving_base, serving.model_name, model.uri, record["destinations"])
    os.makedirs(pushed_model.uri, exist_ok=True)
    with open(os.path.join(pushed_model.uri, files.PUSH_RECORD), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    _mark(pushed_model, record)


def _reasons(model, model_blessing, infra_blessing):
    return reasons_not_to_push(
        blessed=_int_property(model_blessing, "blessed"),
        infra_blessed=_int_property(infra_blessing, "blessed") if infra_blessing is not None else None,
        blessing_model_id=_int_property(model_blessing, "current_model_id"),
        blessing_model_uri=(
            model_blessing.get_string_custom_property("current_model")
            if model_blessing.has_custom_property("current_model")
            else None
        ),
        model_id=model.id,
        model_uri=model.uri,
    )


def _record(model_name, pipeline_run_id, model, model_blessing, infra_blessing, reasons):
    """push.json before the push: what was asked, and why not (``reasons``)."""
    return {
        "pushed": False,
        "model_name": model_name,
        "pipeline_run_id": pipeline_run_id,
        "model": {"uri": model.uri, "id": model.id},
        "model_blessing": {"uri": model_blessing.uri, "id": model_blessing.id},
        "infra_blessing": {"uri": infra_blessing.uri, "id": infra_blessing.id}
        if infra_blessing is not None
        else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "destinations": [],
        "reasons": reasons,
    }


def _plan(
    serving, serving_base, mobile_base, pipeline_run_id, model, model_blessing, teacher_model, lite, examples
):
    """What to push where: student and teacher SavedModels, the TFLite release, warm-up events."""
    source = {
        "pipeline_run_id": pipeline_run_id,
        "student_model_uri": model.uri,
        "student_model_id": model.id,
        "model_blessing_uri": model_blessing.uri,
        "lite_uri": lite.uri if lite is not None else None,
        "teacher_model_uri": teacher_model.uri if teacher_model is not None else None,
    }
    warmup = None
    if examples is not None and serving.warmup_events > 0:
        warmup = layout.read_encoded_events(
            examples.uri, layout.EventSpec.load(examples.uri), serving.warmup_events
        )[0]
    return PushPlan(
        model_name=serving.model_name,
        student_dir=_serving_dir(model),
        serving_base=serving_base,
        teacher_dir=_serving_dir(teacher_model) if teacher_model is not None else None,
        lite_dir=lite.uri if lite is not None else None,
        mobile_base=mobile_base,
        warmup_frames=warmup,
        release={
            "source": source,
            "metrics": {**gate_metrics(model_blessing.uri), "tflite": lite_metrics(lite.uri) if lite else {}},
        },
    )


def _mark(pushed_model, record):
    """The PushedModel properties TFX's conventions and the CLI read."""
    if not record["pushed"]:
        pushed_model.set_int_custom_property("pushed", 0)
        logging.warning("EventPusher: nothing pushed: %s", "; ".join(record["reasons"]))
        return
    by_role = {d["role"]: d for d in record["destinations"]}
    student = by_role["student"]
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_string_custom_property("pushed_version", str(student["version"]))
    pushed_model.set_string_custom_property("pushed_destination", student["path"])
    if "teacher" in by_role:
        pushed_model.set_int_custom_property("teacher_version", by_role["teacher"]["version"])
    if "mobile" in by_role:
        pushed_model.set_int_custom_property("mobile_version", by_role["mobile"]["version"])
        pushed_model.set_string_custom_property("mobile_destination", by_role["mobile"]["path"])
    for d in record["destinations"]:
        logging.info(
            "EventPusher: %s pushed as %s version %d -> %s",
            d["role"],
            d["model_name"],
            d["version"],
            d["path"],
        )
