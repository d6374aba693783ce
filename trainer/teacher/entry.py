"""TFX Trainer entry point for the teacher (``run_fn``).

The Trainer executor already runs TensorFlow in its process, so the logical devices and mesh the
strategy needs cannot be configured there: training runs in a child process
(``trainer.parallel.launch``) with the pipeline's resolved config; ``--strategy multiworker`` starts
``teacher.workers`` local worker processes with a TF_CONFIG each (or one task of an external cluster
when TF_CONFIG is already set), and ``hybrid`` with ``teacher.clients > 1`` as many DTensor clients
with a ``DTENSOR_*`` environment each (or one when DTENSOR_JOBS is set). The (chief) child writes
the exported SavedModel to ``serving_model_dir`` and checkpoints, ``train_report.json``, TensorBoard
scalars and the training-curve plot under ``model_run_dir``. When the Pretrainer ran, its model
arrives as ``fn_args.base_model`` and the teacher's conv backbone starts from it.

A run killed during training (SIGKILL, a lost machine) leaves its checkpoints in its own
``model_run`` directory, and the next pipeline run gets a fresh one. So before training, the
checkpoints of an earlier run that never finished, on the same examples with the same teacher
config, are copied in: the teacher resumes from them instead of starting over.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
from typing import Any

from contract import files, layout
from contract.config import config_from_custom_config
from trainer.parallel import launch
from trainer.teacher.length import steps_text
from trainer.teacher.loop import STATE

RESUME_KEY_FILE = "resume_key.json"  # what a later run must match to adopt this run's checkpoints
_NOT_ADOPTED = ("tensorboard", "*.png", files.TEACHER_CONFIG, RESUME_KEY_FILE, "*.tmp*")


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def adopt_interrupted_checkpoints(model_run_dir: str, key: dict[str, Any]) -> str | None:
    """Copy the newest checkpoints of an unfinished sibling run with the same ``key`` into
    ``model_run_dir``; the directory adopted from, or None."""

    model_run_dir = os.path.abspath(model_run_dir)
    parent = os.path.dirname(model_run_dir)
    best: tuple[int, str] | None = None
    for name in os.listdir(parent):
        run = os.path.join(parent, name)
        if run == model_run_dir or os.path.exists(os.path.join(run, files.TRAIN_REPORT)):
            continue  # finished runs are served from the ML Metadata cache, not resumed
        state = _read_json(os.path.join(run, STATE))
        if (
            state
            and _read_json(os.path.join(run, RESUME_KEY_FILE)) == key
            and (best is None or state["step"] > best[0])
        ):
            best = (int(state["step"]), run)
    if best is None:
        return None
    shutil.copytree(best[1], model_run_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*_NOT_ADOPTED))
    return best[1]


def run_fn(fn_args: Any) -> None:
    """Train the teacher with the configured strategy and export it for serving."""
    cfg = config_from_custom_config(fn_args.custom_config)
    examples_dir = layout.examples_dir_of(fn_args.train_files[0])
    logger = logging.getLogger("eventpipe.teacher")
    logger.info("teacher: %s on %s", cfg.teacher.strategy, examples_dir)
    # With the Pretrainer on, its model is the base model: the teacher starts from that backbone.
    backbone = getattr(fn_args, "base_model", None) or None
    if backbone:
        logger.info("teacher: starting from the pre-trained backbone in %s", backbone)
    key = {"examples": os.path.abspath(examples_dir), "teacher": dataclasses.asdict(cfg.teacher)}
    if backbone:  # only then: interrupted runs without pre-training keep their key
        key["backbone"] = backbone
    os.makedirs(fn_args.model_run_dir, exist_ok=True)  # TFX creates it; direct callers may not
    adopted = adopt_interrupted_checkpoints(fn_args.model_run_dir, key)
    if adopted:
        logger.info("teacher: resuming from the checkpoints of the interrupted run in %s", adopted)
    with open(os.path.join(fn_args.model_run_dir, RESUME_KEY_FILE), "w", encoding="utf-8") as f:
        json.dump(key, f, sort_keys=True, default=str)
    report = launch.train(
        cfg,
        examples_dir,
        fn_args.model_run_dir,
        export_dir=fn_args.serving_model_dir,
        log=lambda line: logger.info("teacher | %s", line),
        # A bar on a terminal, like every other stage's; piped output gets the stage lines only.
        progress=sys.stderr.isatty(),
        init_backbone=backbone,
    )
    logger.info("teacher: eval accuracy %.3f after %s", report["final_eval_accuracy"], steps_text(report))
