"""``eventpipe device-run``: classify events as an app on a device would, without TensorFlow.

Registered by ``pipeline.cli`` like every command; it imports only ``ondevice`` and the
contract, so it runs where TensorFlow is not installed.
"""

from __future__ import annotations

import argparse
import sys

from contract.config import add_config_flags, load_config
from contract.errors import UserError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser(
        "device-run",
        help="classify events on-device with a .tflite model (LiteRT or tflite-runtime, no TensorFlow) "
        "and time it",
        description="Classify events as an app on a device would: LiteRT (or tflite-runtime) and PIL, no "
        "TensorFlow; labels and normalization from the model's own metadata. The accuracy it prints is over "
        "every labelled event of --data. --config/--set: data.max_frame_pixels bounds each frame's decode.",
    )  # fmt: skip
    add_config_flags(d)
    d.add_argument("--model", metavar="FILE", required=True, help="the released model.tflite")
    d.add_argument("--data", metavar="PATH", required=True,
                   help="*.jsonl manifests (a file or a directory of them) or an image-folder tree "
                        "<label>/<event_id>/<frame>.png")  # fmt: skip
    d.add_argument("--limit", type=int, default=0, help="classify at most N events (0: all)")
    d.add_argument("--threads", type=int, default=0, help="interpreter threads (0: one per CPU)")
    d.add_argument("--show", type=int, default=20, help="print the first N predictions (20)")
    d.add_argument("--out", default="", help="write every prediction as JSON Lines here")
    d.set_defaults(func=device_run_command)


def device_run_command(args: argparse.Namespace) -> int:
    from ondevice.device_runner import run_device  # deferred: --help needs none of it

    if args.limit < 0:
        raise UserError("--limit must be >= 0")
    cfg = load_config(args)
    run_device(args.model, args.data, limit=args.limit, threads=args.threads, show=args.show,
               out_path=args.out, max_frame_pixels=cfg.data.max_frame_pixels)  # fmt: skip
    sys.stdout.flush()
    return 0
