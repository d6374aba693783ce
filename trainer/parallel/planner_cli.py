"""``eventpipe plan-parallel``: choose a data / model / hybrid layout before renting GPUs.

Prints, per device count and layout, the bytes each device sends per step, compute and
communication time, the predicted step time with and without overlap and the speedup over
one device (see trainer/parallel/planner.py for the cost model); ``--compare-paper`` adds the
AlexNet prediction next to Krizhevsky 2014's reported speedups. No TensorFlow needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

from contract.config import add_config_flags, load_config, parse_mesh
from trainer.parallel import planner


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan-parallel",
        help="predict bytes moved and step time for data, model and hybrid parallelism",
        description=(
            "Communication planner: for a model (a preset or a JSON layer list), N devices, a compute "
            "rate and a link bandwidth, predict per step and device the bytes sent, compute and "
            "communication time, step time (serial and overlapped) and speedup for pure data, pure "
            "model and hybrid ('one weird trick') parallelism."
        ),
    )
    add_config_flags(p)
    p.add_argument(
        "--model",
        default="eventpipe-teacher",
        help=f"preset ({', '.join(planner.PRESETS)}) or a JSON file of layers (default eventpipe-teacher)",
    )
    p.add_argument("--devices", default="1,2,4,8", help="device counts to plan for, e.g. 1,2,4,8 (default)")
    p.add_argument(
        "--device-flops",
        default="measure",
        help="achieved FLOP/s per device, e.g. 1.4T or 300GFLOP/s; "
        "'measure' = this host's fp32 matmul (default)",
    )
    p.add_argument(
        "--bandwidth",
        default="6GB/s",
        help="link bandwidth per device and direction, e.g. 6GB/s, 25Gbit/s (default 6GB/s)",
    )
    p.add_argument("--latency", default="10us", help="cost per message, e.g. 10us (default)")
    p.add_argument(
        "--batch", default=None, help="examples per device per step; global batch = N x batch (default 128)"
    )
    p.add_argument(
        "--global-batch", default=None, help="fixed global batch split over N devices (instead of --batch)"
    )
    p.add_argument(
        "--bytes-per-value",
        default="4",
        help="bytes per activation/gradient value: 4 fp32, 2 fp16/bf16 (default 4)",
    )
    p.add_argument(
        "--chunks", default="0", help="micro-batches per device for overlapping exchanges (default: N)"
    )
    p.add_argument(
        "--mesh",
        default=None,
        help="batch=D,model=M: also plan the 2-D hybrid (FC sharded over model) for N = D x M "
        "(default for eventpipe-teacher: teacher.mesh when teacher.fc_layout is 2d)",
    )
    p.add_argument(
        "--frames",
        default=None,
        help="eventpipe-teacher: frames per event (default: data.frames or simulator.frames)",
    )
    p.add_argument(
        "--size",
        default=None,
        help="eventpipe-teacher: frame height = width (default: data.height or simulator.size)",
    )
    p.add_argument(
        "--channels",
        default=None,
        help="eventpipe-teacher: 1 or 3 (default: data.channels or simulator.channels)",
    )
    p.add_argument(
        "--classes",
        default=None,
        help="eventpipe-teacher: number of classes or comma-separated names "
        "(default: data.classes or simulator.classes)",
    )
    p.add_argument(
        "--compare-paper",
        action="store_true",
        help="add the AlexNet prediction vs Krizhevsky 2014's speedups",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    p.set_defaults(func=plan_parallel_command)


def _positive_int(flag: str, text: str | None, *, allow_zero: bool = False) -> int:
    try:
        value = int(str(text))
    except ValueError:
        value = -1
    if value < (0 if allow_zero else 1):
        raise planner.PlannerError(
            f"{flag} expects a {'non-negative' if allow_zero else 'positive'} integer, got {text!r}"
        )
    return value


def _teacher_model(args: argparse.Namespace, cfg: Any) -> planner.ModelSpec:
    frames = args.frames if args.frames is not None else (cfg.data.frames or cfg.simulator.frames)
    size = args.size if args.size is not None else (cfg.data.height or cfg.simulator.size)
    width = args.size if args.size is not None else (cfg.data.width or cfg.simulator.size)
    channels = args.channels if args.channels is not None else (cfg.data.channels or cfg.simulator.channels)
    if args.classes is not None:
        classes_text = str(args.classes).strip()
        if classes_text.isdigit():
            classes = int(classes_text)
        else:
            classes = len([c for c in classes_text.split(",") if c.strip()])
    else:
        classes = len(cfg.data.classes or cfg.simulator.classes)
    frames = _positive_int("--frames", frames)
    height = _positive_int("--size", size)
    width = _positive_int("--size", width)
    channels = _positive_int("--channels", channels)
    if channels not in (1, 3):
        raise planner.PlannerError(f"--channels must be 1 or 3, got {channels}")
    if classes < 1:
        raise planner.PlannerError(f"--classes needs at least one class, got {args.classes!r}")
    return planner.eventpipe_teacher(frames, height, width, channels, classes, cfg.teacher)


def _model(args: argparse.Namespace, cfg: Any) -> planner.ModelSpec:
    if args.model == "alexnet":
        return planner.alexnet_owt()
    if args.model == "alexnet-2012":
        return planner.alexnet_2012()
    if args.model == "eventpipe-teacher":
        return _teacher_model(args, cfg)
    return planner.load_model_json(args.model)


def plan_parallel_command(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    model = _model(args, cfg)
    devices = planner.parse_devices(args.devices)
    bandwidth = planner.parse_bandwidth(args.bandwidth)
    latency = planner.parse_duration(args.latency)
    bytes_per_value = _positive_int("--bytes-per-value", args.bytes_per_value)
    chunks = _positive_int("--chunks", args.chunks, allow_zero=True)
    if args.device_flops.strip().lower() == "measure":
        device_flops = planner.measure_matmul_flops()
        flops_note = "measured: this host's numpy fp32 matmul"
    else:
        device_flops = planner.parse_flops(args.device_flops)
        flops_note = "given"
    if args.batch is not None and args.global_batch is not None:
        raise planner.PlannerError("give either --batch (per device) or --global-batch, not both")
    batch = None if args.global_batch is not None else _positive_int("--batch", args.batch or 128)
    global_batch = None if args.global_batch is None else _positive_int("--global-batch", args.global_batch)
    mesh_text = args.mesh
    if mesh_text is None and args.model == "eventpipe-teacher" and cfg.teacher.fc_layout == "2d":
        mesh_text = cfg.teacher.mesh
    mesh = parse_mesh(mesh_text) if mesh_text else None
    if mesh:
        devices = sorted(set(devices) | {mesh["batch"] * mesh["model"]})

    hw = planner.Hardware(device_flops, bandwidth, latency, bytes_per_value)
    plans = planner.plan_all(
        model, devices, hw, batch_per_device=batch, global_batch=global_batch, chunks=chunks, mesh=mesh
    )
    paper = (
        planner.compare_with_paper(bandwidth=bandwidth, latency=latency, chunks=chunks)
        if args.compare_paper
        else None
    )

    result = {
        "model": model.to_dict(),
        "hardware": {**dataclasses.asdict(hw), "device_flops_source": flops_note},
        "scaling": "weak (batch per device)" if batch else "strong (fixed global batch)",
        "plans": [p.to_dict() for p in plans],
        "best": _best(plans),
    }
    if paper is not None:
        result["paper_comparison"] = paper
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(planner.format_model(model))
    print(planner.format_hardware(hw, flops_note))
    scaling = f"{batch} examples per device" if batch else f"global batch {global_batch}"
    print(
        f"batch: {scaling}; training = 3 x forward FLOPs; bytes = sent per device per step (ring collectives)"
    )
    print()
    print(planner.format_plans(plans))
    print()
    for n, best in result["best"].items():
        print(
            f"N={n}: fastest overlapped {best['fastest_overlap']}; fastest serial {best['fastest_serial']}; "
            f"fewest bytes {best['fewest_bytes']} (layouts within 1% listed together)"
        )
    if paper is not None:
        print()
        print(planner.format_paper(paper))
    return 0


def _best(plans: list[planner.LayoutPlan], tolerance: float = 0.01) -> dict[str, dict[str, str]]:
    """Per device count (N > 1): the fastest layouts (overlapped, serial) and the one sending fewest bytes.

    Layouts within ``tolerance`` of the best step time are listed together ("data = hybrid"):
    the model is not precise enough to rank them.
    """

    def fastest(group: list[planner.LayoutPlan], step: Any) -> str:
        best = min(step(p) for p in group)
        return " = ".join(p.layout for p in sorted(group, key=step) if step(p) <= best * (1 + tolerance))

    best: dict[str, dict[str, str]] = {}
    for n in sorted({p.devices for p in plans if p.devices > 1}):
        group = [p for p in plans if p.devices == n]
        best[str(n)] = {
            "fastest_overlap": fastest(group, lambda p: p.step_overlap_s),
            "fastest_serial": fastest(group, lambda p: p.step_no_overlap_s),
            "fewest_bytes": min(group, key=lambda p: p.bytes_per_device).layout,
        }
    return best
