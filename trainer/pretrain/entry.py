"""TFX Trainer entry point for the Pretrainer (``run_fn``).

The Pretrainer is a stock TFX Trainer (``.with_id("Pretrainer")``) over every split of the
Examples, so ML Metadata records what it read and what it made like any other Trainer; its
Model artifact is the TeacherTrainer's ``base_model``, which gives the teacher's lineage to its
pre-training for free. Like the teacher, it trains in a child process
(``trainer.parallel.launch.pretrain``): the executor's TensorFlow runtime has already started
and cannot be given the logical devices the hybrid mesh needs. The backbone (``backbone.npz``,
``backbone.json``) goes to ``serving_model_dir``, where the teacher's ``fn_args.base_model``
points; the report and the loss plot go to ``model_run_dir``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from contract import layout
from contract.config import config_from_custom_config
from trainer.parallel import launch


def run_fn(fn_args: Any) -> None:
    """Pre-train the teacher's backbone on the train and unlabelled events, labels unread."""
    cfg = config_from_custom_config(fn_args.custom_config)
    examples_dir = layout.examples_dir_of(fn_args.train_files[0])
    logger = logging.getLogger("eventpipe.pretrain")
    report = launch.pretrain(
        cfg,
        examples_dir,
        fn_args.model_run_dir,
        export_dir=fn_args.serving_model_dir,
        log=lambda line: logger.info("pretrain | %s", line),
        progress=sys.stderr.isatty(),
    )
    logger.info(
        "pretrain: NT-Xent %.3f -> %.3f over %d steps on %d events",
        report["initial_loss"], report["final_loss"], report["steps"], report["events"]["total"],
    )  # fmt: skip
