"""The Distiller's TFX entry point: a stock TFX Trainer whose ``base_model`` is the teacher."""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

from contract import layout
from contract.config import config_from_custom_config
from contract.errors import UserError
from trainer.distill.distillation import run_distillation


def run_fn(fn_args: Any) -> None:
    """TFX Trainer entry: ``base_model`` is the teacher; ``custom_config["config"]`` the pipeline config."""
    if not fn_args.base_model:
        raise UserError("the student Trainer needs the teacher model as base_model")

    cfg = config_from_custom_config(fn_args.custom_config).student
    examples_uri = layout.examples_dir_of(fn_args.train_files[0])
    output_dir = os.path.dirname(fn_args.serving_model_dir.rstrip("/"))

    train = sorted(f for pattern in fn_args.train_files for f in tf.io.gfile.glob(pattern))
    evals = sorted(f for pattern in fn_args.eval_files for f in tf.io.gfile.glob(pattern))
    run_distillation(
        examples_uri, fn_args.base_model, output_dir, cfg,  # base_model: the teacher's serving dir
        train_files=train, eval_files=evals,
        log_dir=os.path.join(fn_args.model_run_dir, "tensorboard") if fn_args.model_run_dir else None,
    )  # fmt: skip
