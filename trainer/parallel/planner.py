"""Communication planner: bytes moved and predicted step time for data, model and hybrid parallelism.

Pick a layout before renting GPUs. For a model described layer by layer (parameters, forward
FLOPs per example, activation elements per example at each layer's output), N devices, a
per-device compute rate and a link bandwidth, this predicts per training step and device the
bytes sent, the compute time, the communication time with and without overlap, the step time
and the speedup over one device, for

- ``data``: every layer replicated, each device a slice of the batch, gradients all-reduced;
- ``model``: every layer split over its output units/channels, every device sees the whole batch;
- ``hybrid``: Krizhevsky's "one weird trick" (arXiv:1404.5997): data parallel for conv/attention
  layers, model parallel for the fully-connected ("fc") layers, conv features all-gathered
  across workers before the sharded FC layers and their gradients reduce-scattered back;
- ``hybrid-2d`` (with a ``batch x model`` mesh): FC layers sharded over ``model`` and
  batch-split over ``batch``; their gradients all-reduced over ``batch``.

Cost model (every constant is an input; nothing is fitted to a published result):

- Compute: 2 FLOPs per multiply-add; backward = 2x forward (input and weight gradients), so
  training costs 3x the forward FLOPs. Every layout does the same FLOPs per device
  (``global batch x 3F / N``) at the same rate: the model ignores that split matrices run less
  efficiently, and ignores optimizer updates, bias/activation/pooling FLOPs and input loading.
- A layer is placed as ``(d, m)`` with ``d x m = N``: ``d`` batch shards, ``m`` model shards.
  Data parallel is ``(N, 1)``, model parallel ``(1, N)``.
- Gradients of a layer with ``d > 1`` are ring all-reduced over its ``d`` replicas:
  ``2 (d-1)/d x params/m x bytes_per_value`` sent per device, ``2 (d-1)`` messages.
- A layer needs its full input for the examples it processes. Going from ``(d1, m1)`` to
  ``(d2, m2)`` a device receives ``G/d2 x a - min(G/d1, G/d2) x a/m1`` values (``a`` = the
  boundary's activation elements per example, ``G`` = global batch): an all-gather for
  data->model (``(N-1) x b x a`` for ``b`` examples per device), the same for model->model,
  an all-to-all for model->data, nothing for data->data. The backward pass moves the same
  volume the other way (the reduce-scatter of partial input gradients is the all-gather's
  transpose). A model-parallel last layer all-gathers its logits for the loss (forward only).
- A collective costs ``bytes / bandwidth + messages x latency`` on one full-duplex link per
  device (ring algorithms, so per-device bytes are what bounds time; topology is flat: a
  machine whose GPUs share a PCIe switch or cross sockets has a lower effective bandwidth,
  which the user must pass in).
- No overlap: step = compute + every collective, one after another.
- Overlap: a list schedule of two resources per device (compute, link) over the step's
  tasks, each device's batch cut into ``chunks`` micro-batches (default N: the paper's scheme
  (c), in which each worker sends 1/N of its conv features at a time while the FC layers work
  on the previous piece). Gradient all-reduces start as soon as their layer's backward is done
  and overlap the backward of earlier layers (non-preemptive, lower priority than the
  activation exchanges). Two priority orders are tried (layer-major, chunk-major) with ``chunks``
  micro-batches and with one; the best schedule found is reported. Real schedules are rarely this
  good: the serial time bounds the step from above, the overlapped one (nearly) from below.
- Speedup = examples/s on N devices / examples/s on one device (which has no communication).

Paper comparison (``compare_with_paper``): the one-column AlexNet, 128 examples per worker, the
hybrid layout, against Table 1 of Krizhevsky 2014 (1.95x / 3.74x / 6.25x on 2 / 4 / 8 K20s).
Assumed: the paper's 1-GPU time (98.05 h) is 90 epochs of the 1,281,167 ILSVRC-2012 images,
which gives the per-GPU rate (about 40% of the K20's fp32 peak) and calibrates only the 1-GPU
baseline; a 6 GB/s link per GPU (PCIe 2.0 x16), 10 us per message, fp32, flat topology. The
prediction, the ratio to the paper, and the effective bandwidth at which the serial prediction
would equal the paper are reported, not tuned away.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.config import TeacherConfig, frame_pool, stem_stride, teacher_stage_widths
from contract.errors import UserError

LAYOUTS = ("data", "model", "hybrid")
KINDS = ("conv", "attention", "fc", "other")  # "fc" layers are the model-parallel part of hybrid
# Priority orders tried for the overlapped schedule: every layer for all micro-batches before the
# next layer, or every micro-batch through all layers before the next micro-batch.
SCHEDULES = ("layer-major", "chunk-major")
TRAIN_FLOPS_PER_FWD = 3.0  # forward + backward (input grads + weight grads)


class PlannerError(UserError):
    """A model description or planner setting that cannot be used; the message says which."""


# ----------------------------------------------------------------------------- model description


@dataclass(frozen=True)
class Layer:
    """One layer (or block) with a single activation boundary at its output."""

    name: str
    kind: str  # one of KINDS
    params: int
    fwd_flops: float  # forward FLOPs per example (2 per multiply-add)
    out_elements: int  # activation values per example at the layer's output

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PlannerError(
                f"layer {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        if self.params < 0 or self.fwd_flops < 0 or self.out_elements < 1:
            raise PlannerError(
                f"layer {self.name!r}: needs params >= 0, fwd_flops >= 0 and out_elements >= 1"
            )


@dataclass(frozen=True)
class ModelSpec:
    name: str
    layers: tuple[Layer, ...]
    source: str = ""  # where the shapes come from

    def __post_init__(self) -> None:
        if not self.layers:
            raise PlannerError(f"model {self.name!r} has no layers")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise PlannerError(f"model {self.name!r} has duplicate layer names")

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def fwd_flops(self) -> float:
        return sum(layer.fwd_flops for layer in self.layers)

    def params_of(self, kind: str) -> int:
        return sum(layer.params for layer in self.layers if layer.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "params": self.params,
            "fc_params": self.params_of("fc"),
            "fwd_flops_per_example": self.fwd_flops,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def conv_layer(
    name: str,
    hw: int,
    in_c: int,
    out_c: int,
    kernel: int,
    *,
    stride: int = 1,
    pad: int = 0,
    groups: int = 1,
    pool: tuple[int, int] | None = None,
) -> tuple[Layer, int]:
    """A square conv (+ optional max pool ``(window, stride)``); returns the layer and its output side."""
    out = _conv_out(hw, kernel, stride, pad)
    macs_per_out = kernel * kernel * in_c // groups
    flops = 2.0 * out * out * out_c * macs_per_out
    params = out_c * macs_per_out + out_c
    if pool is not None:
        out = _conv_out(out, pool[0], pool[1], 0)
    return Layer(name, "conv", params, flops, out * out * out_c), out


def fc_layer(name: str, n_in: int, n_out: int) -> Layer:
    return Layer(name, "fc", n_in * n_out + n_out, 2.0 * n_in * n_out, n_out)


def _alexnet_fc(n_in: int, classes: int = 1000) -> list[Layer]:
    return [fc_layer("fc6", n_in, 4096), fc_layer("fc7", 4096, 4096), fc_layer("fc8", 4096, classes)]


def alexnet_owt() -> ModelSpec:
    """The single-column AlexNet of "one weird trick" (cuda-convnet2 layers-imagenet-1gpu.cfg).

    224x224x3 input; conv 64 11x11/4 pad 2, pool; 192 5x5, pool; 384 3x3; 256 3x3; 256 3x3, pool;
    FC 4096, 4096, 1000. The network the paper's speedups were measured on.
    """
    layers = []
    conv1, hw = conv_layer("conv1", 224, 3, 64, 11, stride=4, pad=2, pool=(3, 2))
    conv2, hw = conv_layer("conv2", hw, 64, 192, 5, pad=2, pool=(3, 2))
    conv3, hw = conv_layer("conv3", hw, 192, 384, 3, pad=1)
    conv4, hw = conv_layer("conv4", hw, 384, 256, 3, pad=1)
    conv5, hw = conv_layer("conv5", hw, 256, 256, 3, pad=1, pool=(3, 2))
    layers = [conv1, conv2, conv3, conv4, conv5, *_alexnet_fc(hw * hw * 256)]
    return ModelSpec("alexnet", tuple(layers), "Krizhevsky 2014 (arXiv:1404.5997), one column, 224x224 input")


def alexnet_2012() -> ModelSpec:
    """AlexNet as in Krizhevsky et al. 2012: two towers (grouped conv2/4/5), 227x227 input."""
    conv1, hw = conv_layer("conv1", 227, 3, 96, 11, stride=4, pool=(3, 2))
    conv2, hw = conv_layer("conv2", hw, 96, 256, 5, pad=2, groups=2, pool=(3, 2))
    conv3, hw = conv_layer("conv3", hw, 256, 384, 3, pad=1)
    conv4, hw = conv_layer("conv4", hw, 384, 384, 3, pad=1, groups=2)
    conv5, hw = conv_layer("conv5", hw, 384, 256, 3, pad=1, groups=2, pool=(3, 2))
    layers = [conv1, conv2, conv3, conv4, conv5, *_alexnet_fc(hw * hw * 256)]
    return ModelSpec(
        "alexnet-2012", tuple(layers), "Krizhevsky et al. 2012, two-tower grouped convs, 227x227 input"
    )


def eventpipe_teacher(
    frames: int, height: int, width: int, channels: int, classes: int, cfg: TeacherConfig
) -> ModelSpec:
    """The teacher of trainer/models/teacher.py, counted analytically (no TensorFlow).

    Residual blocks and the attention stage become one planner layer each (one boundary at
    their output); the backbone runs on all ``frames`` of an event, so its FLOPs and
    activations are per event. The stem sees ``2 x channels`` when ``frames > 1`` (each frame
    and its difference from the event's mean frame), ``channels`` otherwise; each
    pre-activation block holds its two per-pixel layer norms (``2 x channels`` parameters
    each) and the last block the final norm before the pooling. Parameter counts include
    biases and norm scales/offsets, as Keras counts them; FLOPs count multiply-adds only
    (norms, ReLUs, adds and pooling are ignored, as everywhere in the cost model).
    """
    _check_teacher(frames, height, width, channels, classes, cfg)
    layers, c = _teacher_backbone(frames, height, width, channels, cfg)
    width_f = 2 * c if frame_pool(cfg.pool, frames) == "avgmax" else c
    layers.append(_teacher_attention(frames, width_f, cfg.attention_heads))
    layers.extend(_teacher_head(width_f, cfg.fc_units, classes))
    source = _teacher_source(frames, height, width, channels, classes, cfg)
    return ModelSpec("eventpipe-teacher", tuple(layers), source)


def _check_teacher(
    frames: int, height: int, width: int, channels: int, classes: int, cfg: TeacherConfig
) -> None:
    """Refuse a teacher the counts below cannot describe, naming the setting."""
    if not cfg.conv_filters or not cfg.fc_units:
        raise PlannerError(
            "teacher needs at least one conv stage (teacher.conv_filters) and one fc layer (teacher.fc_units)"
        )
    if min(frames, height, width, channels, classes) < 1:
        raise PlannerError("teacher geometry needs frames, size, channels and classes >= 1")


def _conv_cost(
    frames: int, k: int, stride: int, c_in: int, c_out: int, h: int, w: int
) -> tuple[int, float, int, int]:
    """Parameters, FLOPs per event and output size of a ``k x k`` conv run on every frame."""
    oh, ow = math.ceil(h / stride), math.ceil(w / stride)  # padding="same" (1x1 "valid" agrees)
    return k * k * c_in * c_out + c_out, 2.0 * oh * ow * k * k * c_in * c_out * frames, oh, ow


def _norm_params(c: int) -> int:
    """A per-pixel layer norm over ``c`` channels holds gamma and beta."""
    return 2 * c


def _teacher_backbone(
    frames: int, height: int, width: int, channels: int, cfg: TeacherConfig
) -> tuple[list[Layer], int]:
    """The stem and one layer per residual block; also the channels the last block leaves."""
    widths = teacher_stage_widths(cfg)
    stem_in = 2 * channels if frames > 1 else channels  # frame + frame-difference channels (multi-frame)
    stride = stem_stride(cfg.stem_stride, height, width)
    p, f, h, w = _conv_cost(frames, 3, stride, stem_in, widths[0], height, width)
    c = widths[0]
    layers = [Layer("conv_stem", "conv", p, f, frames * h * w * c)]
    blocks = [
        (stage, block, filters)
        for stage, filters in enumerate(widths)
        for block in range(cfg.blocks_per_stage)
    ]
    for i, (stage, block, filters) in enumerate(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        last = i == len(blocks) - 1
        params, flops, h, w = _residual_block(frames, stride, c, filters, h, w, final_norm=last)
        c = filters
        pooled = 2 * c if frame_pool(cfg.pool, frames) == "avgmax" else c  # avgmax: mean and maximum
        out = frames * pooled if last else frames * h * w * c
        name = f"conv_{stage}" if block == 0 else f"conv_{stage}_{block}"
        layers.append(Layer(name, "conv", params, flops, out))
    return layers, c


def _residual_block(
    frames: int, stride: int, c: int, filters: int, h: int, w: int, *, final_norm: bool
) -> tuple[int, float, int, int]:
    """Parameters, FLOPs per event and output size of one pre-activation block.

    The last block also holds the final norm (+ ReLU) that precedes the global pooling.
    """
    # norm_a on the input, norm_b mid-block
    params, flops = float(_norm_params(c) + _norm_params(filters)), 0.0
    if stride != 1 or c != filters:  # 1x1 projection shortcut from the pre-activated input
        pp, ff, _, _ = _conv_cost(frames, 1, stride, c, filters, h, w)
        params, flops = params + pp, flops + ff
    pa, fa, oh, ow = _conv_cost(frames, 3, stride, c, filters, h, w)
    pb, fb, _, _ = _conv_cost(frames, 3, 1, filters, filters, oh, ow)
    if final_norm:
        params += _norm_params(filters)
    return int(params + pa + pb), flops + fa + fb, oh, ow


def _teacher_attention(frames: int, width_f: int, attention_heads: int) -> Layer:
    """The frame-attention stage over the ``frames`` pooled feature vectors of ``width_f`` values."""
    heads = max(1, min(attention_heads, width_f))
    inner = heads * max(1, width_f // heads)  # heads x key_dim (value_dim = key_dim)
    params = (
        frames * width_f  # frame-position embedding
        + 3 * (width_f * inner + inner)  # query, key, value projections
        + inner * width_f
        + width_f  # output projection
        + 2 * width_f  # layer norm
        + width_f
        + 1  # attention-pooling score
    )
    flops = frames * (2.0 * 4 * width_f * inner + 2.0 * width_f) + 2 * 2.0 * frames * frames * inner
    return Layer("attention", "attention", params, flops, width_f)


def _teacher_head(n_in: int, fc_units: list[int], classes: int) -> list[Layer]:
    """The fully-connected layers and the logits: the model-parallel part of hybrid."""
    layers = []
    for i, units in enumerate(fc_units):
        layers.append(fc_layer(f"fc_{i}", n_in, units))
        n_in = units
    layers.append(fc_layer("logits", n_in, classes))
    return layers


def _teacher_source(
    frames: int, height: int, width: int, channels: int, classes: int, cfg: TeacherConfig
) -> str:
    return (
        f"trainer/models/teacher.py with conv_filters={cfg.conv_filters} x{cfg.width_multiplier:g}, "
        f"{cfg.blocks_per_stage} block(s) per stage, "
        f"stem stride {stem_stride(cfg.stem_stride, height, width)}, "
        f"fc_units={cfg.fc_units}, "
        f"attention_heads={cfg.attention_heads}; "
        f"events of {frames} x {height}x{width}x{channels}, {classes} classes"
    )


PRESETS = ("alexnet", "alexnet-2012", "eventpipe-teacher")


def load_model_json(path: str) -> ModelSpec:
    """A model from JSON:
    ``{"name": ..., "layers": [{"name", "kind", "params", "fwd_flops", "out_elements"}]}``."""
    if not os.path.isfile(path):
        raise PlannerError(f"--model {path!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PlannerError(f"model file {path!r} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("layers"), list):
        raise PlannerError(f'model file {path!r} needs an object with a "layers" list')
    layers = []
    wanted = ("name", "kind", "params", "fwd_flops", "out_elements")
    for i, item in enumerate(raw["layers"]):
        if not isinstance(item, dict) or any(k not in item for k in wanted):
            raise PlannerError(f"model file {path!r}: layer {i} needs the fields {', '.join(wanted)}")
        try:
            layers.append(
                Layer(
                    str(item["name"]),
                    str(item["kind"]),
                    int(item["params"]),
                    float(item["fwd_flops"]),
                    int(item["out_elements"]),
                )
            )
        except (TypeError, ValueError):
            raise PlannerError(f"model file {path!r}: layer {i} has a non-numeric size") from None
    name = str(raw.get("name") or os.path.splitext(os.path.basename(path))[0])
    return ModelSpec(name, tuple(layers), f"JSON file {path}")


# ----------------------------------------------------------------------------- units


_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def parse_bandwidth(text: str) -> float:
    """``6GB/s``, ``600MB/s``, ``25Gbit/s``, ``10Gbps``, ``1GiB/s`` or plain bytes/s -> bytes/s."""
    m = re.fullmatch(
        _NUMBER + r"\s*([kKmMgGtTpP])?(i)?\s*(B|b|bit|bits|byte|bytes)?\s*(/s|ps)?", text.strip()
    )
    if not m or float(m.group(1)) <= 0:
        raise PlannerError(f"--bandwidth: cannot read {text!r}; use a rate like 6GB/s, 600MB/s or 25Gbit/s")
    number, prefix, binary, unit = float(m.group(1)), (m.group(2) or ""), m.group(3), m.group(4) or "B"
    scale = 1024.0 ** ("kmgtp".index(prefix.lower()) + 1) if binary and prefix else _SI[prefix.lower()]
    return number * scale / (8.0 if unit in ("b", "bit", "bits") else 1.0)


def parse_flops(text: str) -> float:
    """``1.4T``, ``1.4TFLOP/s``, ``900GFLOPS`` or plain FLOP/s -> FLOP/s."""
    m = re.fullmatch(
        _NUMBER + r"\s*([kKmMgGtTpP])?\s*(flop/s|flops|flop)?", text.strip(), flags=re.IGNORECASE
    )
    if not m or float(m.group(1)) <= 0:
        raise PlannerError(
            f"--device-flops: cannot read {text!r}; use 'measure' or a rate like 1.4T or 900GFLOP/s"
        )
    return float(m.group(1)) * _SI[(m.group(2) or "").lower()]


def parse_duration(text: str) -> float:
    """``10us``, ``5µs``, ``0.02ms``, ``1e-5`` (seconds) -> seconds."""
    m = re.fullmatch(_NUMBER + r"\s*(s|ms|us|µs|ns)?", text.strip())
    if not m:
        raise PlannerError(f"--latency: cannot read {text!r}; use a time like 10us or 0.02ms")
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}[m.group(2) or "s"]
    return float(m.group(1)) * scale


def measure_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """This host's fp32 matmul FLOP/s with numpy (best of ``repeats``): a ceiling for one device."""

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm up the BLAS threads
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Hardware:
    device_flops: float  # achieved FLOP/s per device
    bandwidth: float  # bytes/s per device and direction
    latency: float = 10e-6  # seconds per message
    bytes_per_value: int = 4  # fp32 activations and gradients

    def __post_init__(self) -> None:
        if self.device_flops <= 0 or self.bandwidth <= 0 or self.latency < 0 or self.bytes_per_value < 1:
            raise PlannerError(
                "hardware needs device_flops > 0, bandwidth > 0, latency >= 0, bytes_per_value >= 1"
            )


@dataclass
class LayoutPlan:
    """Predicted cost of one training step of one layout on N devices (per device)."""

    layout: str
    devices: int
    global_batch: int
    placements: list[tuple[int, int]]  # (batch shards, model shards) per layer
    activation_bytes: float  # sent per device per step: forward + backward activation exchanges
    gradient_bytes: float  # sent per device per step: gradient all-reduces
    compute_s: float
    comm_s: float  # every collective, back to back
    step_no_overlap_s: float
    step_overlap_s: float
    chunks: int  # micro-batches per device in the overlapped schedule
    schedule: str  # one of SCHEDULES: the task order of the overlapped schedule
    single_device_examples_per_s: float
    collectives: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bytes_per_device(self) -> float:
        return self.activation_bytes + self.gradient_bytes

    @property
    def comm_exposed_s(self) -> float:
        """Communication the overlapped schedule could not hide behind compute."""
        return max(0.0, self.step_overlap_s - self.compute_s)

    @property
    def speedup_no_overlap(self) -> float:
        return self.global_batch / self.step_no_overlap_s / self.single_device_examples_per_s

    @property
    def speedup_overlap(self) -> float:
        return self.global_batch / self.step_overlap_s / self.single_device_examples_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "devices": self.devices,
            "global_batch": self.global_batch,
            "per_device_batch": self.global_batch / self.devices,
            "bytes_per_device": self.bytes_per_device,
            "activation_bytes_per_device": self.activation_bytes,
            "gradient_bytes_per_device": self.gradient_bytes,
            "compute_s": self.compute_s,
            "comm_s": self.comm_s,
            "comm_exposed_s": self.comm_exposed_s,
            "step_no_overlap_s": self.step_no_overlap_s,
            "step_overlap_s": self.step_overlap_s,
            "speedup_no_overlap": self.speedup_no_overlap,
            "speedup_overlap": self.speedup_overlap,
            "chunks": self.chunks,
            "schedule": self.schedule,
            "placements": [list(p) for p in self.placements],
            "collectives": self.collectives,
        }


def placements(
    model: ModelSpec, layout: str, devices: int, mesh: dict[str, int] | None = None
) -> list[tuple[int, int]]:
    """``(batch shards, model shards)`` of every layer for a layout on ``devices`` devices."""
    if layout == "data":
        return [(devices, 1)] * len(model.layers)
    if layout == "model":
        return [(1, devices)] * len(model.layers)
    if layout == "hybrid":
        return [(1, devices) if layer.kind == "fc" else (devices, 1) for layer in model.layers]
    if layout == "hybrid-2d":
        if not mesh or mesh["batch"] * mesh["model"] != devices:
            raise PlannerError(f"hybrid-2d needs a batch x model mesh of {devices} devices")
        fc = (mesh["batch"], mesh["model"])
        return [fc if layer.kind == "fc" else (devices, 1) for layer in model.layers]
    raise PlannerError(f"unknown layout {layout!r}; use one of {', '.join((*LAYOUTS, 'hybrid-2d'))}")


def _exchange_values(a: int, batch: int, src: tuple[int, int], dst: tuple[int, int]) -> tuple[float, int]:
    """Values one device receives to turn ``src``-placed activations into ``dst``'s full input;
    ring group size."""
    d1, m1 = src
    d2, _ = dst
    need = batch / d2 * a
    have = min(batch / d1, batch / d2) * a / m1
    return need - have, m1 * max(1, d1 // d2)


@dataclass
class _Task:
    key: tuple[int, int, int]
    resource: str  # "compute" | "link"
    duration: float
    deps: list[int]


def _makespan(tasks: list[_Task]) -> float:
    """List schedule on one compute and one link resource: the lowest-key ready task runs next."""
    dependents: list[list[int]] = [[] for _ in tasks]
    waiting = [len(t.deps) for t in tasks]
    for i, task in enumerate(tasks):
        for d in task.deps:
            dependents[d].append(i)
    ready: dict[str, list[tuple[tuple[int, int, int], int]]] = {"compute": [], "link": []}
    for i, task in enumerate(tasks):
        if not task.deps:
            heapq.heappush(ready[task.resource], (task.key, i))
    idle = {"compute": True, "link": True}
    events: list[tuple[float, int]] = []
    now = end = 0.0
    done = 0
    while True:
        for resource, queue in ready.items():
            if idle[resource] and queue:
                _, i = heapq.heappop(queue)
                idle[resource] = False
                heapq.heappush(events, (now + tasks[i].duration, i))
        if not events:
            break
        now, i = heapq.heappop(events)
        finished = [i]
        while events and events[0][0] <= now:
            finished.append(heapq.heappop(events)[1])
        for i in finished:
            done += 1
            end = max(end, now)
            idle[tasks[i].resource] = True
            for j in dependents[i]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready[tasks[j].resource], (tasks[j].key, j))
    if done != len(tasks):
        raise RuntimeError("planner schedule has a dependency cycle")
    return end


@dataclass(frozen=True)
class _StepCosts:
    """One step's compute and traffic per device for a placement, before any schedule."""

    layers: tuple[Layer, ...]
    hw: Hardware
    fwd: list[float]  # forward compute seconds per layer, whole per-device batch
    exchange: list[tuple[float, int]]  # into layer i: (bytes each way, ring group size)
    loss_bytes: float  # logits a model-parallel last layer all-gathers for the loss
    loss_group: int  # model shards of the last layer
    grads: list[tuple[float, int]]  # per layer: (all-reduce bytes, replicas)

    def collective_s(self, nbytes: float, messages: int) -> float:
        return nbytes / self.hw.bandwidth + messages * self.hw.latency


def plan_layout(
    model: ModelSpec,
    layout: str,
    devices: int,
    global_batch: int,
    hw: Hardware,
    *,
    chunks: int = 0,
    mesh: dict[str, int] | None = None,
) -> LayoutPlan:
    """Cost of one training step of ``layout`` (see the module docstring for the model)."""
    if devices < 1 or global_batch < devices:
        raise PlannerError(
            f"need devices >= 1 and a global batch >= devices, got {devices} and {global_batch}"
        )
    place = placements(model, layout, devices, mesh)
    costs = _step_costs(model, place, global_batch, hw)
    compute_s = TRAIN_FLOPS_PER_FWD * sum(costs.fwd)
    comm_s = _serial_comm_s(costs)
    step_overlap, best_chunks, best_order = _best_overlap(
        costs, _micro_batches(chunks, devices, global_batch)
    )
    return LayoutPlan(
        layout=layout,
        devices=devices,
        global_batch=global_batch,
        placements=place,
        activation_bytes=2 * sum(b for b, _ in costs.exchange) + costs.loss_bytes,
        gradient_bytes=sum(b for b, _ in costs.grads),
        compute_s=compute_s,
        comm_s=comm_s,
        step_no_overlap_s=compute_s + comm_s,
        step_overlap_s=min(step_overlap, compute_s + comm_s),
        chunks=best_chunks,
        schedule=best_order,
        single_device_examples_per_s=hw.device_flops / (TRAIN_FLOPS_PER_FWD * model.fwd_flops),
        collectives=_collectives(costs),
    )


def _step_costs(model: ModelSpec, place: list[tuple[int, int]], G: int, hw: Hardware) -> _StepCosts:
    """Per-step compute and bytes of every layer, boundary and gradient (whole batch, no chunking)."""
    layers = model.layers
    s = hw.bytes_per_value
    fwd = [
        G * layer.fwd_flops / (d * m) / hw.device_flops for layer, (d, m) in zip(layers, place, strict=True)
    ]
    exchange: list[tuple[float, int]] = [(0.0, 1)]
    for i in range(1, len(layers)):
        values, group = _exchange_values(layers[i - 1].out_elements, G, place[i - 1], place[i])
        exchange.append((values * s, group))
    d_last, m_last = place[-1]
    loss_bytes = G / d_last * layers[-1].out_elements * (m_last - 1) / m_last * s
    grads = [
        (2.0 * (d - 1) / d * layer.params / m * s, d) if d > 1 and layer.params else (0.0, 1)
        for layer, (d, m) in zip(layers, place, strict=True)
    ]
    return _StepCosts(layers, hw, fwd, exchange, loss_bytes, m_last, grads)


def _collectives(costs: _StepCosts) -> list[dict[str, Any]]:
    """The step's collectives with their bytes per device, for the report."""
    layers = costs.layers
    collectives = []
    for i, (nbytes, group) in enumerate(costs.exchange):
        if nbytes > 0:
            collectives.append(
                {
                    "what": f"activations into {layers[i].name} (fwd + bwd)",
                    "bytes": 2 * nbytes,
                    "group": group,
                }
            )
    if costs.loss_bytes > 0:
        collectives.append(
            {
                "what": f"{layers[-1].name} outputs for the loss",
                "bytes": costs.loss_bytes,
                "group": costs.loss_group,
            }
        )
    for i, (nbytes, group) in enumerate(costs.grads):
        if nbytes > 0:
            collectives.append(
                {"what": f"{layers[i].name} gradient all-reduce", "bytes": nbytes, "group": group}
            )
    return collectives


def _serial_comm_s(costs: _StepCosts) -> float:
    """Every collective back to back: activation exchanges both ways, the loss gather, gradients."""
    loss_bytes, loss_group = costs.loss_bytes, costs.loss_group
    return (
        sum(2 * costs.collective_s(b, g - 1) for b, g in costs.exchange if b > 0)
        + (costs.collective_s(loss_bytes, loss_group - 1) if loss_bytes > 0 else 0.0)
        + sum(costs.collective_s(b, 2 * (g - 1)) for b, g in costs.grads if b > 0)
    )


def _micro_batches(chunks: int, devices: int, global_batch: int) -> int:
    """Micro-batches per device to try: ``chunks`` (0: one per device), at least one example each."""
    wanted = chunks if chunks > 0 else devices
    return max(1, min(wanted, global_batch // devices))


def _best_overlap(costs: _StepCosts, wanted: int) -> tuple[float, int, str]:
    """The shortest overlapped step over the schedules tried: (seconds, micro-batches, order)."""
    step_overlap, best_chunks, best_order = _overlapped_s(costs, 1, SCHEDULES[0]), 1, SCHEDULES[0]
    if wanted > 1:
        for order in SCHEDULES:
            t = _overlapped_s(costs, wanted, order)
            if t < step_overlap:
                step_overlap, best_chunks, best_order = t, wanted, order
    return step_overlap, best_chunks, best_order


@dataclass
class _TaskGraph:
    """Tasks of one overlapped step; keys are ``(phase, layer step, micro-batch)`` in layer-major order."""

    order: str  # one of SCHEDULES
    tasks: list[_Task] = field(default_factory=list)

    def add(self, key: tuple[int, int, int], resource: str, duration: float, deps: list[int]) -> int:
        if self.order == "chunk-major":  # finish a micro-batch through the layers before the next one
            key = (key[0], key[2], key[1])
        self.tasks.append(_Task(key, resource, duration, deps))
        return len(self.tasks) - 1


def _overlapped_s(costs: _StepCosts, n_chunks: int, order: str) -> float:
    """Step time of the list schedule with ``n_chunks`` micro-batches under one priority order."""
    graph = _TaskGraph(order)
    last_fwd = [_forward_tasks(graph, costs, n_chunks, c) for c in range(n_chunks)]
    bwd_of_layer = _backward_tasks(graph, costs, n_chunks, last_fwd)
    for i, (nbytes, group) in enumerate(costs.grads):
        if nbytes > 0:
            # An all-reduce waits for its layer's backward on every micro-batch.
            key = (2, len(costs.layers) - i, 0)
            graph.add(key, "link", costs.collective_s(nbytes, 2 * (group - 1)), bwd_of_layer[i])
    return _makespan(graph.tasks)


def _forward_tasks(graph: _TaskGraph, costs: _StepCosts, n_chunks: int, c: int) -> int:
    """Micro-batch ``c``'s forward pass, each layer after its input exchange; returns its last task."""
    L = len(costs.layers)
    prev = None
    for i in range(L):
        deps = [] if prev is None else [prev]
        nbytes, group = costs.exchange[i]
        if nbytes > 0:
            deps = [graph.add((0, i, c), "link", costs.collective_s(nbytes / n_chunks, group - 1), deps)]
        prev = graph.add((0, i, c), "compute", costs.fwd[i] / n_chunks, deps)
    if costs.loss_bytes > 0:
        gather_s = costs.collective_s(costs.loss_bytes / n_chunks, costs.loss_group - 1)
        prev = graph.add((0, L, c), "link", gather_s, [prev])
    return prev


def _backward_tasks(
    graph: _TaskGraph, costs: _StepCosts, n_chunks: int, last_fwd: list[int]
) -> list[list[int]]:
    """Every micro-batch's backward pass, last layer first; returns each layer's backward tasks."""
    L = len(costs.layers)
    bwd_of_layer: list[list[int]] = [[] for _ in costs.layers]
    for c in range(n_chunks):
        prev = last_fwd[c]
        for i in reversed(range(L)):
            prev = graph.add((1, L - i, c), "compute", 2 * costs.fwd[i] / n_chunks, [prev])
            bwd_of_layer[i].append(prev)
            nbytes, group = costs.exchange[i]
            if nbytes > 0:
                prev = graph.add(
                    (1, L - i, c), "link", costs.collective_s(nbytes / n_chunks, group - 1), [prev]
                )
    return bwd_of_layer


def plan_all(
    model: ModelSpec,
    devices: list[int],
    hw: Hardware,
    *,
    batch_per_device: int | None = None,
    global_batch: int | None = None,
    chunks: int = 0,
    mesh: dict[str, int] | None = None,
) -> list[LayoutPlan]:
    """Every layout for every device count: weak scaling (``batch_per_device``) or a fixed
    ``global_batch``."""
    if (batch_per_device is None) == (global_batch is None):
        raise PlannerError(
            "give exactly one of a per-device batch (--batch) and a global batch (--global-batch)"
        )
    plans = []
    for n in devices:
        if global_batch is not None:
            if global_batch % n:
                raise PlannerError(f"--global-batch {global_batch} does not split over {n} devices")
            g = global_batch
        else:
            g = batch_per_device * n
        for layout in LAYOUTS:
            plans.append(plan_layout(model, layout, n, g, hw, chunks=chunks))
        if mesh and mesh["batch"] * mesh["model"] == n:
            plans.append(plan_layout(model, "hybrid-2d", n, g, hw, chunks=chunks, mesh=mesh))
    return plans


def parse_devices(text: str) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise PlannerError(f"--devices expects device counts like 1,2,4,8, got {text!r}")
    return sorted(set(values))


# ----------------------------------------------------------------------------- the paper


# Krizhevsky 2014, Table 1, rows where conv and FC layers use the same batch (128 per worker):
# training time of the one-column AlexNet on K20 GPUs and the speedup it implies.
PAPER_HOURS = {1: 98.05, 2: 50.24, 4: 26.20, 8: 15.68}
PAPER_SPEEDUPS = {2: 1.95, 4: 3.74, 8: 6.25}
PAPER_BATCH_PER_WORKER = 128
# Assumptions (not in the table): the epochs and training-set size that turn the 1-GPU time into
# a rate, and the link. The 1-GPU rate is the baseline, so only scaling is predicted.
PAPER_EPOCHS = 90
IMAGENET_TRAIN_IMAGES = 1_281_167
K20_PEAK_FP32 = 3.52e12
PAPER_BANDWIDTH = 6e9  # PCIe 2.0 x16 (the K20's bus): 8 GB/s raw per direction, ~6 GB/s achieved
PAPER_LATENCY = 10e-6


def paper_device_flops(model: ModelSpec) -> float:
    """FLOP/s one K20 achieved in the paper, from its 1-GPU time and the stated epoch assumption."""
    images_per_s = PAPER_EPOCHS * IMAGENET_TRAIN_IMAGES / (PAPER_HOURS[1] * 3600.0)
    return images_per_s * TRAIN_FLOPS_PER_FWD * model.fwd_flops


def compare_with_paper(
    *, bandwidth: float = PAPER_BANDWIDTH, latency: float = PAPER_LATENCY, chunks: int = 0
) -> dict[str, Any]:
    """Predicted hybrid speedups for the paper's AlexNet on 2/4/8 K20s next to the reported ones."""
    model = alexnet_owt()
    flops = paper_device_flops(model)
    hw = Hardware(flops, bandwidth, latency, 4)
    rows = []
    for n, reported in PAPER_SPEEDUPS.items():
        g = PAPER_BATCH_PER_WORKER * n
        plans = {layout: plan_layout(model, layout, n, g, hw, chunks=chunks) for layout in LAYOUTS}
        hybrid = plans["hybrid"]
        rows.append(
            {
                "devices": n,
                "reported_speedup": reported,
                "predicted_overlap": hybrid.speedup_overlap,
                "predicted_no_overlap": hybrid.speedup_no_overlap,
                "ratio_overlap": hybrid.speedup_overlap / reported,
                "ratio_no_overlap": hybrid.speedup_no_overlap / reported,
                "data_parallel_overlap": plans["data"].speedup_overlap,
                "model_parallel_overlap": plans["model"].speedup_overlap,
                "bandwidth_to_match_no_overlap": _bandwidth_to_match(model, n, g, hw, chunks, reported),
            }
        )
    return {
        "model": model.to_dict(),
        "assumptions": {
            "device_flops": flops,
            "device_flops_fraction_of_k20_peak": flops / K20_PEAK_FP32,
            "single_gpu_images_per_s": flops / (TRAIN_FLOPS_PER_FWD * model.fwd_flops),
            "epochs": PAPER_EPOCHS,
            "train_images": IMAGENET_TRAIN_IMAGES,
            "bandwidth": bandwidth,
            "latency": latency,
            "bytes_per_value": 4,
            "batch_per_worker": PAPER_BATCH_PER_WORKER,
            "paper_hours": PAPER_HOURS,
        },
        "rows": rows,
    }


def _bandwidth_to_match(
    model: ModelSpec, n: int, g: int, hw: Hardware, chunks: int, reported: float
) -> float | None:
    """Effective link rate at which the no-overlap hybrid prediction equals the reported speedup."""

    def speedup(bw: float) -> float:
        return plan_layout(
            model, "hybrid", n, g, dataclasses.replace(hw, bandwidth=bw), chunks=chunks
        ).speedup_no_overlap

    lo, hi = 1e6, 1e13
    if not speedup(lo) <= reported <= speedup(hi):
        return None
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if speedup(mid) < reported else (lo, mid)
    return math.sqrt(lo * hi)


# ----------------------------------------------------------------------------- output


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def format_plans(plans: list[LayoutPlan]) -> str:
    header = (
        f"{'N':>3} {'layout':<10} {'batch':>6} {'MB/step/dev':>12} {'act MB':>9} {'grad MB':>9} "
        f"{'compute ms':>10} {'comm ms':>9} {'exposed ms':>10} {'step ms':>9} {'step ms':>9} "
        f"{'speedup':>8} {'speedup':>8}"
    )
    sub = (
        f"{'':>3} {'':<10} {'':>6} {'':>12} {'':>9} {'':>9} {'':>10} {'':>9} {'(overlap)':>10} "
        f"{'(serial)':>9} {'(overlap)':>9} {'(serial)':>8} {'(overlap)':>8}"
    )
    lines = [header, sub]
    for p in plans:
        lines.append(
            f"{p.devices:>3} {p.layout:<10} {p.global_batch:>6} {p.bytes_per_device / 1e6:>12.1f} "
            f"{p.activation_bytes / 1e6:>9.1f} {p.gradient_bytes / 1e6:>9.1f} {_ms(p.compute_s):>10} "
            f"{_ms(p.comm_s):>9} {_ms(p.comm_exposed_s):>10} {_ms(p.step_no_overlap_s):>9} "
            f"{_ms(p.step_overlap_s):>9} {p.speedup_no_overlap:>7.2f}x {p.speedup_overlap:>7.2f}x"
        )
    return "\n".join(lines)


def format_model(model: ModelSpec) -> str:
    fc = model.params_of("fc")
    return (
        f"model {model.name}: {model.params / 1e6:.2f}M params ({fc / 1e6:.2f}M in fc layers, "
        f"{(model.params - fc) / 1e6:.2f}M elsewhere), {_si(model.fwd_flops, 'FLOP')} forward per example"
        + (f"\n  shapes: {model.source}" if model.source else "")
    )


def format_hardware(hw: Hardware, flops_note: str) -> str:
    return (
        f"device {_si(hw.device_flops, 'FLOP/s')} ({flops_note}), link {_si(hw.bandwidth, 'B/s')} per device "
        f"and direction, {hw.latency * 1e6:.3g} us per message, {hw.bytes_per_value} bytes per value"
    )


def format_paper(result: dict[str, Any]) -> str:
    a = result["assumptions"]
    lines = [
        "AlexNet vs Krizhevsky 2014 "
        "('one weird trick', Table 1: K20 GPUs, 128 examples per worker, hybrid layout)",
        f"  assumed per-GPU rate {_si(a['device_flops'], 'FLOP/s')} = the paper's 1-GPU time "
        f"({a['paper_hours'][1]} h) for {a['epochs']} epochs of {a['train_images']:,} images "
        f"({a['single_gpu_images_per_s']:.0f} images/s; "
        f"{a['device_flops_fraction_of_k20_peak']:.0%} of the K20's "
        f"{K20_PEAK_FP32 / 1e12:.2f} TFLOP/s fp32 peak)",
        f"  assumed link {_si(a['bandwidth'], 'B/s')} per GPU and direction (PCIe 2.0 x16), "
        f"{a['latency'] * 1e6:.3g} us per message, fp32, flat topology",
        f"  {'GPUs':>4} {'reported':>9} {'predicted':>10} {'ratio':>6} {'predicted':>10} {'ratio':>6} "
        f"{'data-par':>9} {'model-par':>10} {'link for reported':>18}",
        f"  {'':>4} {'':>9} {'(overlap)':>10} {'':>6} {'(serial)':>10} {'':>6} "
        f"{'(overlap)':>9} {'(overlap)':>10} {'(serial)':>18}",
    ]
    for r in result["rows"]:
        need = r["bandwidth_to_match_no_overlap"]
        lines.append(
            f"  {r['devices']:>4} {r['reported_speedup']:>8.2f}x {r['predicted_overlap']:>9.2f}x "
            f"{r['ratio_overlap']:>6.2f} {r['predicted_no_overlap']:>9.2f}x {r['ratio_no_overlap']:>6.2f} "
            f"{r['data_parallel_overlap']:>8.2f}x {r['model_parallel_overlap']:>9.2f}x "
            f"{(_si(need, 'B/s') if need else 'none'):>18}"
        )
    lines.append(
        "  ratio = predicted / reported. The model leaves out what the paper's machine also paid for: "
        "GPUs behind shared PCIe switches and across CPU sockets, smaller per-GPU matrices, synchronisation; "
        "'link for reported' is the effective bandwidth at which the serial prediction would equal the paper."
    )
    return "\n".join(lines)
