"""TFX Trainer module file for the teacher (``run_fn``).

The Trainer executor already runs TensorFlow in its process, so the logical devices and
mesh the strategy needs cannot be configured there: training runs in a child process
(``trainer.launch``) with the pipeline's resolved config; ``--strategy multiworker`` starts
``teacher.workers`` local worker processes with a TF_CONFIG each (or one task of an external
cluster when TF_CONFIG is already set). The (chief) child writes the exported SavedModel to
``serving_model_dir`` and checkpoints, ``train_report.json``, TensorBoard scalars and the
training-curve plot under ``model_run_dir``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipeline import layout
from pipeline.config import Config
from trainer import launch

CONFIG_KEY = "config"


def config_from_fn_args(fn_args: Any) -> Config:
    """The pipeline config passed as ``custom_config={"config": <Config.to_dict() or its JSON>}``."""
    raw = (fn_args.custom_config or {}).get(CONFIG_KEY)
    if raw is None:
        return Config()
    return Config.from_dict(json.loads(raw) if isinstance(raw, str) else raw)


def run_fn(fn_args: Any) -> None:
    """Train the teacher with the configured strategy and export it for serving."""
    cfg = config_from_fn_args(fn_args)
    examples_dir = layout.examples_dir_of(fn_args.train_files[0])
    logger = logging.getLogger("eventpipe.teacher")
    logger.info("teacher: %s on %s", cfg.teacher.strategy, examples_dir)
    report = launch.train(
        cfg,
        examples_dir,
        fn_args.model_run_dir,
        export_dir=fn_args.serving_model_dir,
        log=lambda line: logger.info("teacher | %s", line),
        progress=True,  # the run's user sees the teacher's steps like every other stage's
    )
    logger.info(
        "teacher: eval accuracy %.3f after %d steps", report["final_eval_accuracy"], report["steps"]
    )
