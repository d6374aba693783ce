"""``eventpipe generate``: write a simulated event data set (see simulator)."""

from __future__ import annotations

import argparse

from contract.config import add_config_flags, load_config


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="simulate camera events (JSONL manifests + PNG frames)",
        description=(
            "Render realistic camera events: real-photo backgrounds per device, moving objects per "
            "class, hard negatives (lighting, shake, noise with nothing there), occlusion, blur and "
            "label noise. Same arguments and seed give byte-identical files."
        ),
    )
    p.add_argument(
        "--out", required=True, help="output directory (new, empty, or a previous simulator output)"
    )
    p.add_argument(
        "--events",
        type=int,
        dest="simulator.events",
        metavar="N",
        default=None,
        help="number of events (2000)",
    )
    p.add_argument(
        "--frames", type=int, dest="simulator.frames", metavar="K", default=None, help="frames per event (4)"
    )
    p.add_argument(
        "--size",
        type=int,
        dest="simulator.size",
        metavar="PIXELS",
        default=None,
        help="frame height = width in pixels (32)",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        dest="simulator.channels",
        default=None,
        help="1 = grayscale, 3 = RGB (3)",
    )
    p.add_argument(
        "--classes",
        dest="simulator.classes",
        metavar="A,B,C",
        default=None,
        help="comma-separated class names (empty,person,vehicle,animal); 'empty' = hard negatives",
    )
    p.add_argument(
        "--unlabelled-fraction",
        type=float,
        dest="simulator.unlabelled_fraction",
        metavar="F",
        default=None,
        help="share of events written without a label (0.2)",
    )
    p.add_argument(
        "--label-noise",
        type=float,
        dest="simulator.label_noise",
        metavar="P",
        default=None,
        help="probability a labelled event carries a wrong label (0.0)",
    )
    p.add_argument(
        "--devices",
        type=int,
        dest="simulator.devices",
        metavar="D",
        default=None,
        help="number of cameras (6)",
    )
    p.add_argument(
        "--seed", type=int, dest="simulator.seed", metavar="S", default=None, help="random seed (0)"
    )
    p.add_argument(
        "--shards",
        type=int,
        dest="simulator.shards",
        metavar="M",
        default=None,
        help="JSONL manifest shards (2)",
    )
    p.add_argument(
        "--workers",
        type=int,
        dest="simulator.workers",
        metavar="W",
        default=None,
        help="render processes; 0 = one per CPU core (0)",
    )
    p.add_argument(
        "--inline-frames",
        action="store_const",
        const=True,
        dest="simulator.inline_frames",
        default=None,
        help='embed frames as {"b64": PNG} in the manifest instead of files',
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from simulator.writer import generate  # deferred: `eventpipe --help` imports every command module

    cfg = load_config(args).simulator
    summary = generate(args.out, cfg, progress=not args.no_progress)
    counts = summary["counts"]
    rate = summary["events"] / max(summary["seconds"], 1e-9)
    print(
        f"wrote {summary['events']} events ({cfg.frames} frame(s) of {cfg.size}x{cfg.size}x{cfg.channels}) "
        f"in {len(summary['manifests'])} shard(s) to {summary['out_dir']} "
        f"in {summary['seconds']:.1f}s ({rate:.0f} events/s, {summary['workers']} worker(s))"
    )
    print(
        "classes: "
        + ", ".join(f"{k}={v}" for k, v in counts["by_class"].items())
        + f"; unlabelled={counts['unlabelled']}; noisy labels={counts['noisy_labels']}"
    )
    if "preview" in summary:
        print(f"preview: {summary['out_dir']}/{summary['preview']}")
    return 0
