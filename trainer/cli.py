"""``eventpipe train``: train the teacher outside TFX, for experiments with strategies and meshes.

Training runs in this process: logical devices are configured before TensorFlow starts,
so each invocation is one mesh configuration. (The TFX entry point, whose process already
runs TensorFlow, starts this command in a subprocess instead: ``trainer.parallel.launch``.)
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from typing import Any

from contract import files
from contract.config import PRETRAIN_STRATEGIES, STRATEGIES, TeacherConfig, add_config_flags, load_config
from contract.errors import UserError
from trainer.teacher.length import steps_text


def _command(subparsers: Any, name: str, help: str, description: str, splits: str, workdir_help: str) -> Any:
    """A training command's parser with the flags every one has first: config, --data, --workdir."""
    p = subparsers.add_parser(name, help=help, description=description)
    add_config_flags(p)
    p.add_argument(
        "--data",
        metavar="DIR",
        dest="examples",
        required=True,
        help=f"Examples artifact dir ({splits}, event_spec.json)",
    )
    p.add_argument("--workdir", metavar="DIR", dest="run.workdir", help=f"{workdir_help} (default: work)")
    return p


def _output_flags(p: Any, what: str, default: str) -> None:
    """The flags every training command ends with: where its output goes, and quiet."""
    p.add_argument("--export-dir", metavar="DIR", help=f"where the {what} goes (default WORKDIR/{default})")
    p.add_argument("--no-export", action="store_true", help=f"skip writing the {what}")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(subparsers: Any) -> None:
    p = _command(
        subparsers, "train",
        help="train the teacher on an Examples artifact (single | mirrored | multiworker | hybrid)",
        description="Train the teacher; writes WORKDIR/train_report.json, checkpoints (a rerun resumes), "
        "TensorBoard scalars, a training-curve plot and the exported SavedModel.",
        splits="Split-train/, Split-eval/",
        workdir_help="checkpoints, report and model go here; rerun to resume",
    )  # fmt: skip
    p.add_argument(
        "--strategy",
        dest="teacher.strategy",
        choices=STRATEGIES,
        help="distribution strategy (default hybrid)",
    )
    p.add_argument(
        "--logical-devices",
        metavar="N",
        dest="teacher.logical_devices",
        type=int,
        help="split the CPU into N devices when no GPU (default 4)",
    )
    p.add_argument(
        "--clients",
        metavar="N",
        dest="teacher.clients",
        type=int,
        help="hybrid: N DTensor client processes (one per host) form one mesh, "
        "each with --logical-devices devices; started on 127.0.0.1 unless DTENSOR_JOBS is set (default 1)",
    )
    p.add_argument("--mesh", metavar="AXES", dest="teacher.mesh", help="hybrid mesh, e.g. batch=2,model=2")
    p.add_argument(
        "--fc-layout",
        dest="teacher.fc_layout",
        choices=["2d", "1d"],
        help="hybrid: 2d batch x model mesh, or the paper's 1-D layout",
    )
    p.add_argument(
        "--steps",
        metavar="N",
        dest="teacher.steps",
        type=int,
        help="optimisation steps in total "
        "(default 0: teacher.epochs over the train split, at least teacher.min_steps)",
    )
    p.add_argument(
        "--epochs",
        metavar="E",
        dest="teacher.epochs",
        type=float,
        help=f"epochs over the train split (default {TeacherConfig.epochs:g})",
    )
    p.add_argument(
        "--seed", metavar="S", dest="teacher.seed", type=int, help="initialisation and data-order seed"
    )
    p.add_argument(
        "--global-batch-size",
        metavar="B",
        dest="teacher.global_batch_size",
        type=int,
        help="events per step over all devices",
    )
    p.add_argument(
        "--mixed-precision",
        dest="teacher.mixed_precision",
        choices=["off", "bf16", "fp16"],
        help="compute dtype policy",
    )
    p.add_argument(
        "--checkpoint-every",
        metavar="N",
        dest="teacher.checkpoint_every",
        type=int,
        help="steps between checkpoints",
    )
    p.add_argument(
        "--init-backbone",
        metavar="DIR",
        help="start the conv backbone from a pre-trained one (eventpipe pretrain's --export-dir)",
    )
    _output_flags(p, "SavedModel", "model")
    p.set_defaults(func=train_command)

    p = _command(
        subparsers, "pretrain",
        help="self-supervised pre-training of the teacher's conv backbone (temporal contrast, no labels)",
        description="Pre-train the teacher's backbone on the train and unlabelled events "
        "(frames of one event are positive pairs, NT-Xent); "
        "writes WORKDIR/pretrain_report.json, the loss plot and the backbone "
        "(backbone.npz) that eventpipe train --init-backbone starts from.",
        splits="Split-train/, Split-unlabelled/", workdir_help="report and plot go here",
    )  # fmt: skip
    p.add_argument(
        "--strategy",
        dest="pretrain.strategy",
        choices=PRETRAIN_STRATEGIES,
        help="teacher (default: the teacher's), single, hybrid",
    )
    p.add_argument(
        "--steps",
        metavar="N",
        dest="pretrain.steps",
        type=int,
        help="optimisation steps (default 0: pretrain.epochs)",
    )
    _output_flags(p, "backbone", "backbone")
    p.set_defaults(func=pretrain_command)


def pretrain_command(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    examples = os.path.abspath(args.examples)
    if not os.path.isdir(examples):
        raise UserError(f"--data {args.examples} is not a directory")
    export_dir = (
        None if args.no_export else os.path.abspath(args.export_dir or os.path.join(cfg.workdir, "backbone"))
    )
    os.makedirs(cfg.workdir, exist_ok=True)
    _quiet_libraries()
    from trainer.pretrain.loop import train  # deferred: every CLI command starts without TensorFlow

    report = train(cfg, examples, cfg.workdir, export_dir=export_dir, progress=not args.quiet)
    print(
        f"pretrain {report['strategy']}: {report['steps']} steps on {report['events']['total']} events, "
        f"NT-Xent {report['initial_loss']:.3f} -> {report['final_loss']:.3f} "
        f"(chance {report['chance_loss']:.3f}), "
        f"{report['timing']['wall_seconds']:.0f} s"
    )
    print(f"report: {os.path.join(cfg.workdir, files.PRETRAIN_REPORT)}")
    if report.get("backbone"):
        print(f"backbone: {report['backbone']}")
    return 0


def train_command(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    examples = os.path.abspath(args.examples)
    if not os.path.isdir(examples):
        raise UserError(f"--data {args.examples} is not a directory")
    export_dir = (
        None if args.no_export else os.path.abspath(args.export_dir or os.path.join(cfg.workdir, "model"))
    )
    os.makedirs(cfg.workdir, exist_ok=True)
    cfg.save(os.path.join(cfg.workdir, "config.json"))

    from trainer.parallel import launch  # never imports TensorFlow

    if launch.starts_dtensor_clients(cfg):
        # One process per client, started as the pipeline's Trainer starts them.
        report = launch.train(cfg, examples, cfg.workdir, export_dir=export_dir, progress=not args.quiet,
                              init_backbone=args.init_backbone)  # fmt: skip
    else:
        _quiet_libraries()
        from trainer.teacher.loop import train  # deferred: every CLI command starts without TensorFlow

        report = train(cfg.teacher, examples, cfg.workdir, export_dir=export_dir, progress=not args.quiet,
                       init_backbone=args.init_backbone)  # fmt: skip
    print(summary_line(report))
    if report["is_chief"]:
        print(f"report: {os.path.join(cfg.workdir, files.TRAIN_REPORT)}")
        if report["export_dir"]:
            print(f"model: {report['export_dir']}")
    return 0


def _quiet_libraries() -> None:
    """TensorFlow's retracing and deprecation warnings bury the progress users need to see."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def summary_line(report: dict[str, Any]) -> str:
    """One human line: what ran, where it ended, how fast."""
    mesh = ",".join(f"{k}={v}" for k, v in report["mesh"].items())
    layout = f" {report['fc_layout']}" if report.get("fc_layout") else ""
    losses = report["losses"]
    speed = report["timing"]["examples_per_second"]
    resumed = f", resumed at step {report['resumed_from_step']}" if report.get("resumed_from_step") else ""
    parts = [f"teacher {report['strategy']}{layout} ({mesh}): {steps_text(report)}{resumed}"]
    if losses:
        parts.append(f"final loss {losses[-1]:.4f}")
    parts.append(f"eval accuracy {report['eval']['accuracy']:.3f} on {report['eval']['events']} events")
    if speed:
        parts.append(f"{speed:.1f} events/s")
    return ", ".join(parts)
