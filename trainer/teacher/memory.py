"""Will the teacher's training fit in memory? An estimate made before the first step.

A plan that cannot fit must end in a clear error naming the setting to lower, not in the
kernel's OOM killer (SIGKILL, a traceback in the parent, a machine that swapped first).

The estimate: forward activations of one event (every layer output, per-frame layers times
the frames of an event) times the global batch, doubled for the backward pass (gradients of
activations live beside the saved forward ones), plus the decoded input batches the input
pipeline keeps in flight, plus weights, gradients and Adam's two slots for every device copy
(logical CPU devices share the host's memory), plus the TensorFlow runtime itself. It errs on
the high side of real runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import psutil

from contract.config import TeacherConfig
from contract.errors import UserError
from contract.layout import EventSpec

BYTES = 4  # float32
BACKWARD_FACTOR = 2.0
INPUT_BATCHES_IN_FLIGHT = 4  # prefetch + parallel map
RUNTIME_BYTES = 1.5 * 2**30  # TensorFlow, TFX imports, thread pools
GIB = 2**30
# Layers between these two run once per frame (frames folded into the batch).
PER_FRAME_FROM, PER_FRAME_UNTIL = "fold_frames", "unfold_frames"


def _output_elements(layer: Any) -> int:
    outputs = layer.output
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    total = 0
    for tensor in outputs:
        dims = [d for d in tensor.shape[1:]]
        if all(d is not None for d in dims):
            total += int(np.prod(dims)) if dims else 1
    return total


def activation_bytes_per_event(model: Any, spec: EventSpec) -> int:
    """Bytes of every layer output for one event in a forward pass."""
    total = 0
    per_frame = False
    for layer in model.layers:
        if layer.name == PER_FRAME_UNTIL:
            per_frame = False
        if layer.name == PER_FRAME_FROM:
            per_frame = True
        total += _output_elements(layer) * (spec.frames if per_frame else 1)
    return total * BYTES


def available_bytes() -> int:
    """Memory this process may still use: MemAvailable, capped by a cgroup limit if one is set."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    # cgroup v2, then v1: (limit, usage) files.
    for limit_path, usage_path in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_path, encoding="ascii") as f:
                raw = f.read().strip()
            if raw.isdigit() and int(raw) < 2**60:
                with open(usage_path, encoding="ascii") as f:
                    cgroup_left = int(raw) - int(f.read().strip())
                available = cgroup_left if available is None else min(available, cgroup_left)
        except (OSError, ValueError):
            continue
    if available is None:
        available = int(psutil.virtual_memory().available)
    return available


def estimate(model: Any, spec: EventSpec, cfg: TeacherConfig, *, weight_copies: int = 1) -> dict[str, Any]:
    """Estimated peak bytes of training ``model`` with ``cfg``'s global batch (see module doc)."""
    per_event = activation_bytes_per_event(model, spec)
    activations = per_event * cfg.global_batch_size * BACKWARD_FACTOR
    inputs = int(np.prod(spec.input_shape)) * BYTES * cfg.global_batch_size * INPUT_BATCHES_IN_FLIGHT
    params = sum(int(np.prod(w.shape)) for w in model.weights)
    weights = params * BYTES * 4 * max(1, weight_copies)  # value, gradient, Adam m and v
    total = activations + inputs + weights + RUNTIME_BYTES
    return {
        "total_bytes": int(total),
        "activation_bytes_per_event": int(per_event),
        "activations_bytes": int(activations),
        "input_bytes": int(inputs),
        "weights_bytes": int(weights),
        "runtime_bytes": int(RUNTIME_BYTES),
        "weight_copies": int(max(1, weight_copies)),
    }


def check_fits(
    model: Any,
    spec: EventSpec,
    cfg: TeacherConfig,
    *,
    weight_copies: int = 1,
    available: int | None = None,
) -> dict[str, Any]:
    """The estimate, or a UserError naming what to lower when it exceeds ``memory_fraction`` of
    free memory."""
    plan = estimate(model, spec, cfg, weight_copies=weight_copies)
    free = available_bytes() if available is None else available
    budget = free * cfg.memory_fraction
    plan.update(available_bytes=int(free), budget_bytes=int(budget), memory_fraction=cfg.memory_fraction)
    if plan["total_bytes"] <= budget:
        return plan
    fixed = plan["total_bytes"] - plan["activations_bytes"] - plan["input_bytes"]
    per_event_batch = (plan["activations_bytes"] + plan["input_bytes"]) / cfg.global_batch_size
    fitting_batch = int((budget - fixed) // per_event_batch) if budget > fixed else 0
    hint = (
        f"teacher.global_batch_size={fitting_batch} would fit" if fitting_batch >= 1
        else "even one event per batch does not fit"
    )  # fmt: skip
    raise UserError(
        f"teacher training needs about {plan['total_bytes'] / GIB:.1f} GiB "
        f"(activations {plan['activations_bytes'] / GIB:.1f} GiB "
        f"for a global batch of {cfg.global_batch_size} events "
        f"of {spec.frames}x{spec.height}x{spec.width}x{spec.channels}, weights and optimizer "
        f"{plan['weights_bytes'] / GIB:.1f} GiB) but only {budget / GIB:.1f} GiB may be used "
        f"({cfg.memory_fraction:.0%} of {free / GIB:.1f} GiB available); lower teacher.global_batch_size "
        f"({hint}), data.max_input_pixels (frames are {spec.height}x{spec.width} now), teacher.conv_filters "
        "or data.frames"
    )
