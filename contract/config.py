"""The one typed configuration of eventpipe.

Defaults live here and nowhere else. A run's configuration is: these defaults, then
a JSON file (``--config FILE``), then ``--set section.field=value`` overrides, then
the dedicated CLI flags. The resolved object is written next to every run's
report so a run can be repeated exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

from contract.errors import UserError

_Section = TypeVar("_Section")


class ConfigError(UserError, ValueError):
    """A configuration value a user supplied is not usable; the message says which."""


@dataclass
class DataConfig:
    # Class vocabulary, in label-id order. Empty: derived from the labels seen at ingest.
    classes: list[str] = field(default_factory=list)
    # Model input geometry. 0 means "from the data" (most frames / most common size seen).
    frames: int = 0
    height: int = 0
    width: int = 0
    channels: int = 0
    # Ingest rules.
    max_frames: int = 16
    eval_percent: int = 20  # share of events (by hash of event_id) in the eval split
    max_reject_rate: float = 0.05
    max_frame_bytes: int = 8 * 1024 * 1024
    # Decoded pixels per frame (checked from the image header, before decoding): a small PNG can
    # declare 13000x13000 and decode to half a gigabyte. 4096x4096 (48 MiB as RGB). Ingest
    # quarantines a larger frame (frame_too_large); both servables and device-run refuse it.
    max_frame_pixels: int = 4096 * 4096
    # Pixel budget per frame of the model input when height/width come from the data: larger
    # frames (VGA cameras) are resized once, keeping their aspect ratio, to fit it (128x128).
    max_input_pixels: int = 128 * 128


# Teacher distribution strategies (trainer.parallel.strategies runs the first three,
# trainer.parallel.hybrid the last).
STRATEGIES = ("single", "mirrored", "multiworker", "hybrid")


@dataclass
class SimulatorConfig:
    events: int = 2000
    frames: int = 4
    size: int = 32
    channels: int = 3
    classes: list[str] = field(default_factory=lambda: ["empty", "person", "vehicle", "animal"])
    devices: int = 6
    unlabelled_fraction: float = 0.2
    label_noise: float = 0.0
    shards: int = 2
    seed: int = 0
    workers: int = 0  # processes rendering in parallel; 0 = one per CPU core (in-process for small sets)
    inline_frames: bool = False  # frames as {"b64": PNG} inside the manifest instead of files


@dataclass
class TeacherConfig:
    strategy: str = "hybrid"  # one of STRATEGIES
    logical_devices: int = 4
    workers: int = 2  # multiworker: local worker processes the pipeline starts when TF_CONFIG is unset
    # hybrid: DTensor clients (processes, one per host), each bringing logical_devices devices to one
    # mesh; > 1 starts that many local clients when DTENSOR_JOBS is unset.
    clients: int = 1
    mesh: str = "batch=2,model=2"
    # 1d (the paper's): all-gather features, FC sharded over all devices; 2d: batch x model mesh.
    # 1d is the cheaper one on CPUs (docs/benchmarks.md, "Why the defaults are what they are").
    fc_layout: str = "1d"
    # Training length follows the data: up to `epochs` over the train split (at least min_steps),
    # stopping early once the eval loss has not improved for `patience` evals in the second half
    # of the decay (a checkpoint at a high rate is not annealed yet); the best weights are
    # exported. The cap is what the demo's 2-core budget affords (docs/benchmarks.md,
    # "Quality, teacher length").
    epochs: float = 16.0
    min_steps: int = 200
    patience: int = 4  # evals in the decay's second half without a new best eval loss; 0 = run all epochs
    steps: int = 0  # > 0: exactly this many steps (overrides epochs, min_steps and patience)
    global_batch_size: int = 32
    reference_batch_size: int = 32  # the batch size base_learning_rate is tuned for
    base_learning_rate: float = 3e-4  # AdamW (Adam when weight_decay is 0); 1e-3 sits at chance longer
    weight_decay: float = 1e-4  # decoupled weight decay on conv and dense kernels
    label_smoothing: float = 0.1
    warmup_steps: int = 30  # linear warm-up, the peak held until decay_start of the steps, ...
    decay_start: float = 0.25
    final_lr_fraction: float = 0.05  # ... then a cosine decay to this fraction of the peak
    mixed_precision: str = "off"  # off | bf16 | fp16
    checkpoint_every: int = 100  # a DTensor save retraces the saver (docs/benchmarks.md, "Teacher training")
    eval_every: int = 0  # steps between eval-loss checks (the best one is exported); 0: once per epoch
    eval_batches: int = 0  # 0: the whole eval split
    augment: bool = True  # per-event flip, brightness/contrast jitter and shift (same for all frames)
    memory_fraction: float = 0.8  # refuse to start when the estimate exceeds this share of free memory
    seed: int = 0
    # Architecture. The capacity sits in the residual backbone (stride-2 stem, then stages whose
    # first block halves the size); width_multiplier and blocks_per_stage scale it (a GPU run turns
    # them up). The fully-connected head is the model-parallel part, not where the size lives.
    conv_filters: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    blocks_per_stage: int = 1
    width_multiplier: float = 1.0
    stem_stride: int = 2  # frames under 2 x MIN_STEM_OUTPUT a side get a stride-1 stem (stem_stride())
    attention_heads: int = 4
    fc_units: list[int] = field(default_factory=lambda: [512, 512])
    dropout: float = 0.1
    # Weight of the auxiliary loss that trains the frame-attention weights to name the best frame
    # (cross-entropy on events whose best_frame is known).
    frame_loss_weight: float = 0.5
    norm: str = "group"  # conv-block normalisation: group (GroupNorm) | pixel (per-pixel layer norm)
    # GroupNorm's groups (Wu & He's); at most one per channel, fewer if C % G. Fewer groups leave a
    # random backbone's frame embeddings alike: at these widths the teacher learns slowly and the
    # Pretrainer's pretext stays at chance (docs/benchmarks.md, "Why the defaults are what they are").
    norm_groups: int = 32
    pool: str = "auto"  # per-frame pooling: auto (frame_pool()) | avg | max | avgmax (concatenated)


MIN_STEM_OUTPUT = 16  # pixels a side a strided stem must leave; smaller frames keep their size


def stem_stride(stride: int, height: int, width: int) -> int:
    """The stem's stride for ``height`` x ``width`` frames: ``stride`` where the strided frame keeps at
    least ``MIN_STEM_OUTPUT`` pixels a side, else 1.

    An early downsampling spends the demo's 32x32 FLOPs on width and depth, but small frames lose
    their detail to it (docs/benchmarks.md, "Why the defaults are what they are"). Teacher,
    student and the planner all use this rule.
    """
    return stride if min(height, width) // stride >= MIN_STEM_OUTPUT else 1


POOLS = ("avg", "max", "avgmax")


def frame_pool(pool: str, frames: int) -> str:
    """The teacher's per-frame pooling for events of ``frames`` frames: ``pool``, or for ``auto``
    the spatial mean where frames can be contrasted (K > 1) and the maximum for single frames.

    Multi-frame events hand the backbone their difference channels, which already locate what
    changed, and the mean pools it best; a single frame has no contrast, and a small object in a
    cluttered scene is lost in the mean: the teacher stays at chance on a 28x28 gray 10-class
    set, where the maximum trains (docs/benchmarks.md, "Pooling").
    """
    if pool == "auto":
        return "avg" if frames > 1 else "max"
    if pool not in POOLS:
        raise ValueError(f"teacher.pool must be auto, {', '.join(POOLS)}; got {pool!r}")
    return pool


def teacher_stage_widths(cfg: TeacherConfig) -> list[int]:
    """Each conv stage's channels: ``conv_filters``, or scaled by a ``width_multiplier`` other than
    1 (rounded to multiples of 8)."""
    if cfg.width_multiplier == 1:
        return list(cfg.conv_filters)
    return [max(8, int(round(f * cfg.width_multiplier / 8.0)) * 8) for f in cfg.conv_filters]


# Augmentations the pre-training pretext may apply to each view (trainer.pretrain.views).
PRETRAIN_AUGMENTATIONS = ("flip", "shift", "color", "noise")
MIN_PRETRAIN_TEMPERATURE = 0.1  # trainer.pretrain.model.nt_xent stays exact in float32 above it
# Where the pretext's negatives come from (trainer.pretrain.views.contrastive_batches).
PRETRAIN_NEGATIVES = ("camera", "batch")
# Strategies the Pretrainer runs under; "teacher" = the teacher's own (teacher.strategy).
PRETRAIN_STRATEGIES = ("teacher", "single", "hybrid")


@dataclass
class PretrainConfig:
    """Self-supervised pre-training of the teacher's conv backbone (the Pretrainer, off by default).

    Frames of one event are positive pairs (temporal contrast, NT-Xent); the labels are never read.
    """

    enabled: bool = False  # eventpipe run --pretrain
    # Over the train + unlabelled splits (the eval split stays unseen); the backbone keeps improving
    # with epochs here (docs/benchmarks.md, "Why the defaults are what they are").
    epochs: float = 10.0
    min_steps: int = 100  # ... but at least this many steps
    steps: int = 0  # > 0: exactly this many steps
    batch: int = 32  # events per step; 2 x batch views in the NT-Xent softmax
    temperature: float = 0.2  # NT-Xent softmax temperature
    learning_rate: float = 1e-3  # Adam, cosine decay to 5% after a short warm-up
    augmentations: list[str] = field(default_factory=lambda: list(PRETRAIN_AUGMENTATIONS))
    # temporal: two different frames of an event are the positive pair; same_frame: one frame under two
    # augmentations (plain SimCLR), the ablation that shows what the temporal pairing adds.
    pairs: str = "temporal"
    # camera: each batch's events come from one camera (cameras with under two batches of events are
    # batched together; beyond 64 cameras groups are shared), so the negatives share the positives'
    # background and only the object tells events apart; batch: any events. With batch negatives
    # the backbone learns which camera it is looking at instead of the object (docs/benchmarks.md,
    # "Why the defaults are what they are").
    negatives: str = "camera"
    projection_units: list[int] = field(default_factory=lambda: [256, 128])  # head; the last is z's size
    strategy: str = "teacher"  # one of PRETRAIN_STRATEGIES
    seed: int = 0


def pretrain_problems(p: PretrainConfig) -> list[str]:
    """What is wrong with a ``pretrain`` section, one clear sentence per field (empty: usable)."""
    problems = []
    if p.steps < 0:
        problems.append(f"pretrain.steps must be >= 0 (0: from pretrain.epochs), got {p.steps}")
    if p.steps == 0 and (not p.epochs > 0 or p.min_steps < 1):
        problems.append(f"pretrain.epochs must be > 0 and pretrain.min_steps >= 1 (or set pretrain.steps), "
                        f"got {p.epochs} and {p.min_steps}")  # fmt: skip
    if p.batch < 2:
        problems.append(f"pretrain.batch must be >= 2 (NT-Xent needs negatives), got {p.batch}")
    if not p.temperature >= MIN_PRETRAIN_TEMPERATURE:
        # The loss drops each view's self-similarity by subtraction (no mask: DTensor-friendly);
        # below 0.1 that subtraction can lose the negatives' float32 mass entirely.
        problems.append(f"pretrain.temperature must be >= {MIN_PRETRAIN_TEMPERATURE}, got {p.temperature}")
    if not p.learning_rate > 0:
        problems.append(f"pretrain.learning_rate must be > 0, got {p.learning_rate}")
    unknown = [a for a in p.augmentations if a not in PRETRAIN_AUGMENTATIONS]
    if unknown:
        problems.append(f"pretrain.augmentations: unknown {', '.join(map(repr, unknown))}; "
                        f"choose from {', '.join(PRETRAIN_AUGMENTATIONS)}")  # fmt: skip
    if len(p.projection_units) < 2 or any(u < 1 for u in p.projection_units):
        problems.append(f"pretrain.projection_units must be at least two positive sizes "
                        f"(hidden layers, then the output), got {p.projection_units}")  # fmt: skip
    if p.pairs not in ("temporal", "same_frame"):
        problems.append(f"pretrain.pairs must be temporal or same_frame, got {p.pairs!r}")
    if p.negatives not in PRETRAIN_NEGATIVES:
        problems.append(
            f"pretrain.negatives must be one of {', '.join(PRETRAIN_NEGATIVES)}, got {p.negatives!r}"
        )
    if p.strategy not in PRETRAIN_STRATEGIES:
        problems.append(
            f"pretrain.strategy must be one of {', '.join(PRETRAIN_STRATEGIES)}, got {p.strategy!r}"
        )
    return problems


TEACHER_NORMS = ("group", "pixel")


def check_teacher(cfg: TeacherConfig) -> None:
    """Refuse teacher architecture choices no model can be built with, before anything runs (else
    the TeacherTrainer would fail after ingest): one line naming each bad field."""
    problems = []
    if cfg.pool != "auto" and cfg.pool not in POOLS:
        problems.append(f"teacher.pool must be auto, {', '.join(POOLS)}; got {cfg.pool!r}")
    if cfg.norm not in TEACHER_NORMS:
        problems.append(f"teacher.norm must be {' or '.join(TEACHER_NORMS)}; got {cfg.norm!r}")
    if cfg.norm_groups < 1:
        problems.append(f"teacher.norm_groups must be >= 1; got {cfg.norm_groups}")
    if problems:
        raise ConfigError("; ".join(problems))


def check_pretrain(cfg: Config) -> None:
    """Refuse an unusable ``pretrain`` section with one line naming each bad field."""
    problems = pretrain_problems(cfg.pretrain)
    if pretrain_strategy(cfg) == "hybrid":
        p, dims = cfg.pretrain, mesh_dims(cfg.teacher)
        (data_axis, data_size), (model_axis, model_size) = dims[0], dims[-1]
        if p.batch % data_size:
            problems.append(f"pretrain.batch {p.batch} must be a multiple of the {data_axis} axis "
                            f"({data_size}) of teacher.mesh {cfg.teacher.mesh} under hybrid")  # fmt: skip
        hidden = p.projection_units[:-1]
        if any(u % model_size for u in hidden):
            problems.append(f"pretrain.projection_units {p.projection_units}: "
                            "under hybrid each hidden layer must be "
                            f"a multiple of the {model_axis} axis ({model_size}) "
                            f"of teacher.mesh {cfg.teacher.mesh}")  # fmt: skip
    if problems:
        raise ConfigError("; ".join(problems))


def pretrain_strategy(cfg: Config) -> str:
    """The strategy the Pretrainer runs under: ``pretrain.strategy``, or the teacher's.

    multiworker and multi-client hybrid are the teacher's alone: a ConfigError says what to set.
    """
    name = cfg.teacher.strategy if cfg.pretrain.strategy == "teacher" else cfg.pretrain.strategy
    if name in ("mirrored", "multiworker"):
        raise ConfigError(f"the Pretrainer runs single or hybrid, not {name} (teacher.strategy); "
                          "set pretrain.strategy=single or pretrain.strategy=hybrid")  # fmt: skip
    if name == "hybrid" and cfg.teacher.clients > 1:
        raise ConfigError("the Pretrainer runs hybrid in one process (teacher.clients > 1 is the teacher's); "
                          "set pretrain.strategy=single")  # fmt: skip
    return name


@dataclass
class StudentConfig:
    depth_multiplier: float = 1.0  # MobileNet width multiplier on every stage's channels
    filters: list[int] = field(default_factory=lambda: [32, 64, 128])
    head_units: int = 128
    blocks_per_stage: int = 2  # depthwise-separable blocks per stage (the first one strides)
    # The stem also sees each frame minus the event's mean frame (motion), as the teacher does.
    # Single-frame data has no motion: the branch is left out (an all-zero tensor has no int8 range).
    frame_contrast: bool = True
    # Per stage, after the stride-2 stem. [2, 1, 2] rather than MobileNet's [1, 2, 2]: fewer FLOPs and a
    # faster int8 model at no loss of distilled accuracy (docs/benchmarks.md,
    # "Why the defaults are what they are").
    strides: list[int] = field(default_factory=lambda: [2, 1, 2])
    dropout: float = 0.1
    weight_decay: float = 0.0  # L2 on conv kernels
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the hard-label loss; 1 - alpha goes to distillation
    # Weight of the ranking loss that trains the frame scores to name the best frame (the known one,
    # else the teacher's pick; the scratch baseline gets the known ones only). Every earlier frame
    # must score frame_margin below it; the named frame is the argmax of the scores tilted by
    # frame_tilt per frame towards the earliest. As measured: the student's best frame rose from
    # 0.32 to 0.73 at no cost in class accuracy; weight 0.5 cost 0.8 points (docs/benchmarks.md,
    # "Best frame: the label by visible share, and the ranking loss adopted").
    frame_loss_weight: float = 0.1
    frame_margin: float = 1.0
    frame_tilt: float = 0.5
    # Dense distillation ("student float"); the scratch baseline gets the same steps. Patient: at
    # 10 the distilled student was no better than its scratch twin on held-out events
    # (docs/benchmarks.md, "Why the defaults are what they are").
    epochs: int = 20
    # Small data sets: an epoch is at least min_steps / epochs steps (50), so every phase (dense,
    # pruning, QAT, scratch) trains long enough to converge (docs/benchmarks.md,
    # "Why the defaults are what they are").
    min_steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 2e-3
    # Half the prunable weights: at 0.75 pruning took back what distillation had gained (and refused
    # the single-frame set) (docs/benchmarks.md, "Why the defaults are what they are").
    target_sparsity: float = 0.5
    prune_epochs: int = 4  # distillation fine-tuning with pruning ("student pruned"); 0 = no pruning
    prune_learning_rate: float = 1e-3  # start of the pruning phase's cosine decay
    pruning_begin_fraction: float = 0.0  # of the pruning phase's steps
    pruning_end_fraction: float = 0.5  # sparsity is held at target for the rest of the phase
    # Quantization-aware fine-tune of the pruned student (sparsity kept: TFMOT PQAT); its float
    # twin is the production student and the int8 TFLite is converted from it. 0 = no QAT.
    qat_epochs: int = 2
    qat_learning_rate: float = 2e-4
    use_unlabelled: bool = True
    # Every phase and the scratch baseline train on augmented views (shift and photometric); the
    # teacher labels this many views per event once, and pass e over the data shows view e % views.
    # 0 = no augmentation (docs/benchmarks.md, "Consistent teaching on augmented views").
    augment_views: int = 4
    teacher_batch_size: int = 64  # batch for computing the teacher's soft labels (once per view)
    # Decoded training events stay in memory when they fit (MiB, counted twice for the shuffle
    # buffer; 0 = always decode from the files): every phase then skips the PNG decoding.
    cache_mb: int = 1024
    seed: int = 0


@dataclass
class LiteConfig:
    input_type: str = "int8"  # int8 | uint8 for the full-integer model's input
    # Calibration events; fewer cost int8 parity (docs/benchmarks.md, "Why the defaults are what they are").
    representative_examples: int = 500
    min_agreement: float = 0.99  # TFLite top-1 vs its float student on every ingested event
    measure_latency: bool = True  # p50/p99 per event of every variant (batch 1, 1 thread)
    latency_runs: int = 200
    latency_warmup: int = 20
    latency_rounds: int = 10  # variants are timed in alternating rounds (fair on a busy machine)
    seed: int = 0


@dataclass
class GateConfig:
    min_accuracy: float = 0.5  # floor on the overall eval accuracy of both models (TFMA, overall slice)
    # Floor on every class's own eval accuracy (TFMA, each label_name slice), so a model that
    # fails one class is refused even when the overall accuracy hides it.
    min_class_accuracy: float = 0.5
    max_student_drop: float = 0.05  # student >= (1 - max_drop) x teacher
    max_regression: float = 0.02  # vs the last blessed model


@dataclass
class ServingConfig:
    model_name: str = "eventpipe"
    # TF Serving's --model_base_path: the directory of version directories ("" = the pusher's
    # <serving base>/<model_name>). A --model_config_file (ModelServerConfig text proto) lists
    # several models instead, re-read every model_config_file_poll_wait_seconds (0: never).
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: float = 0.0
    host: str = "127.0.0.1"
    rest_port: int = 8501  # 0 picks a free port, -1 turns REST off
    grpc_port: int = 8500  # 0 picks a free port, -1 turns gRPC off
    version_policy: str = "latest"
    poll_seconds: float = 1.0  # --file_system_poll_wait_seconds; 0 polls once, at start
    # Dynamic batching of SavedModel requests (--enable_batching), off by default as in TF
    # Serving: on 2 cores it loses throughput at 4 clients and wins at 16 (docs/benchmarks.md,
    # "Serving (make bench-serving)").
    enable_batching: bool = False
    max_batch_size: int = 16
    batch_timeout_ms: float = 2.0
    # Batches collected or run at once per signature (BatchingParameters.num_batch_threads);
    # 0: one per core, TF Serving's default. 1 here: a second slot's leader closes as soon as
    # nobody else is coming, so the load splits into smaller batches (docs/benchmarks.md,
    # "Why the defaults are what they are").
    num_batch_threads: int = 1
    # TensorFlow's thread pools in `eventpipe serve` (--tensorflow_intra_op_parallelism and
    # --tensorflow_inter_op_parallelism); 0: TensorFlow's default, as in TF Serving.
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    batching_parameters_file: str = ""  # BatchingParameters text proto; overrides the three above
    monitoring_config_file: str = ""  # MonitoringConfig text proto; "" = Prometheus on at TF Serving's path
    warmup_events: int = 8  # eval events the pusher writes as assets.extra/tf_serving_warmup_requests
    max_body_bytes: int = 64 * 1024 * 1024
    # Elements a gRPC request tensor may declare, checked before anything is allocated: 16 MB of
    # float32, 21 events of decoded 4x128x128x3 frames, far more than any batch of encoded frames.
    max_tensor_elements: int = 4 * 1024 * 1024
    # REST: a connection that sends nothing for this long is closed (slow or stalled clients
    # cannot hold a thread forever), and at most max_connections are served at once (503 beyond).
    read_timeout_seconds: float = 30.0
    max_connections: int = 64
    grpc_threads: int = 32  # --grpc_max_threads: gRPC requests handled at once
    grpc_channel_arguments: str = ""  # --grpc_channel_arguments: "grpc.key=value,..." for the gRPC server
    version_labels: str = ""  # JSON {"stable": 1, "canary": 2}; "" = <model_base_path>/labels.json
    prefer_tflite: bool = False  # a version dir holding both: serve model.tflite, not the SavedModel
    # ServingValidator: eval events sent to the candidate in the server over REST and gRPC, the
    # largest difference from the in-process answer it accepts, and how long it waits for the load.
    validation_events: int = 16
    validation_tolerance: float = 1e-4
    validation_timeout_seconds: float = 300.0


@dataclass
class RunConfig:
    data: str = ""
    workdir: str = "work"
    runner: str = "local"  # local | beam | kubeflow
    beam_workers: int = 1
    beam_args: list[str] = field(default_factory=list)
    metadata: str = ""  # "" = SQLite under workdir; or mysql://user:pass@host:port/db
    enable_cache: bool = True
    serving_base: str = ""  # "" = serving/ beside the pipeline root (<workdir>/serving by default)
    mobile_base: str = ""  # "" = mobile/ beside the pipeline root (<workdir>/mobile by default)
    image: str = "eventpipe:latest"  # container image for Kubeflow (built from the repo's Dockerfile)
    pipeline_root: str = ""  # "" = <workdir>/pipeline; a gs:// or shared path on Kubeflow


# Per-component [CPU cores, memory GB] on Kubeflow (GB = 10^9 bytes, the unit of KFP's ResourceSpec):
# sized from a demo run's peaks on 2 cores, with
# room for 10x the data; the trainers get the most (TensorFlow threads, the decoded-event cache).
KUBEFLOW_RESOURCES: dict[str, list[float]] = {
    "EventExampleGen": [2, 4], "StatisticsGen": [2, 4], "SchemaGen": [1, 2], "ExampleValidator": [1, 2],
    "IngestGate": [0.5, 1], "Pretrainer": [4, 16], "TeacherTrainer": [4, 16], "TeacherEvaluator": [2, 8],
    "Distiller": [4, 16], "StudentEvaluator": [2, 8], "LiteConverter": [2, 8], "ServingValidator": [2, 8],
    "ReleaseGate": [0.5, 1], "EventPusher": [1, 4],
}  # fmt: skip


@dataclass
class KubeflowConfig:
    """What the compiled Kubeflow spec asks the cluster for (requests = limits, so a component gets
    what it was sized for and never more)."""

    gpus: int = 0  # accelerators for the TeacherTrainer
    accelerator: str = (
        "nvidia.com/gpu"  # the accelerator type the cluster knows (e.g. NVIDIA_TESLA_T4 on Vertex)
    )
    resources: dict[str, list[float]] = field(
        default_factory=lambda: {k: list(v) for k, v in KUBEFLOW_RESOURCES.items()}
    )
    # Local paths and an image without a registry compile only on request: a cluster's pods see
    # neither this machine's disk nor its images (a kind or minikube cluster can).
    allow_local: bool = False


def section_json(section: Any) -> str:
    """One config section as the JSON string a TFX component parameter carries: every component
    takes its configuration this one way, and its defaults live only in the dataclass."""
    return json.dumps(dataclasses.asdict(section), sort_keys=True)


def section_from_json(cls: type[_Section], text: str) -> _Section:
    """The section ``section_json`` wrote (an unknown field is an error, not ignored)."""
    return cls(**json.loads(text))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    lite: LiteConfig = field(default_factory=LiteConfig)
    gates: GateConfig = field(default_factory=GateConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    kubeflow: KubeflowConfig = field(default_factory=KubeflowConfig)

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        cfg = cls()
        for section, values in raw.items():
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be an object, got {values!r}")
            for key, value in values.items():
                cfg.set(f"{section}.{key}", value)
        return cfg

    @classmethod
    def load(cls, path: str) -> Config:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} does not exist")
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path!r} is not valid JSON: {e}") from e
        return cls.from_dict(raw)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    # -- overrides -------------------------------------------------------------------
    def set(self, dotted: str, value: Any) -> None:
        """Set ``section.field`` to ``value``, coercing strings to the field's type."""
        section_name, _, key = dotted.partition(".")
        section = getattr(self, section_name, None)
        if section is None or not dataclasses.is_dataclass(section) or not key:
            raise ConfigError(
                f"unknown config key {dotted!r}; "
                f"sections: {', '.join(f.name for f in dataclasses.fields(self))}"
            )
        fields = {f.name: f for f in dataclasses.fields(section)}
        if key not in fields:
            raise ConfigError(f"unknown config key {dotted!r}; {section_name} has: {', '.join(fields)}")
        current = getattr(section, key)
        setattr(section, key, _coerce(dotted, value, current))

    def apply_overrides(self, assignments: list[str]) -> None:
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set expects section.field=value, got {item!r}")
            key, value = item.split("=", 1)
            self.set(key.strip(), value.strip())

    # -- derived paths ---------------------------------------------------------------
    @property
    def workdir(self) -> str:
        return os.path.abspath(self.run.workdir)

    @property
    def pipeline_root(self) -> str:
        """``run.pipeline_root`` (a bucket path stays as given), else ``<workdir>/pipeline``."""
        return _location(self.run.pipeline_root) or os.path.join(self.workdir, "pipeline")

    @property
    def serving_base(self) -> str:
        """Where blessed models are pushed: ``run.serving_base``, else ``serving/`` beside the
        pipeline root (``<workdir>/serving`` by default). One rule for every runner."""
        return _location(self.run.serving_base) or _beside(self.pipeline_root, "serving")

    @property
    def mobile_base(self) -> str:
        """Where on-device releases go: ``run.mobile_base``, else ``mobile/`` beside the pipeline root."""
        return _location(self.run.mobile_base) or _beside(self.pipeline_root, "mobile")

    @property
    def report_path(self) -> str:
        return os.path.join(self.workdir, "report.json")


TRAINER_CONFIG_KEY = "config"  # the custom_config entry of a TFX Trainer that holds the config


def trainer_custom_config(config: Config, *sections: str) -> dict[str, Any]:
    """A Trainer's ``custom_config``: only the sections it reads, so its cache key ignores the others."""
    full = config.to_dict()
    return {TRAINER_CONFIG_KEY: {name: full[name] for name in sections}}


def config_from_custom_config(custom_config: dict[str, Any] | None) -> Config:
    """The config a Trainer's ``run_fn`` was given (a dict, or its JSON); defaults when absent."""
    raw = (custom_config or {}).get(TRAINER_CONFIG_KEY)
    if raw is None:
        return Config()
    return Config.from_dict(json.loads(raw) if isinstance(raw, str) else raw)


def _location(path: str) -> str:
    """A configured path: URLs (``gs://...``) as given, local paths made absolute, "" stays ""."""
    return path if not path or "://" in path else os.path.abspath(path)


def _beside(root: str, name: str) -> str:
    """``name`` in the directory that holds ``root`` (a local path or a URL); a root that is a
    whole bucket (``gs://bucket``) has no parent to share, so ``name`` goes inside it."""
    root = root.rstrip("/")
    scheme, _, rest = root.rpartition("://")
    if scheme and "/" not in rest:
        return f"{root}/{name}"
    return f"{root.rsplit('/', 1)[0]}/{name}"


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Convert ``value`` (often a CLI string) to the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if isinstance(value, str):
                lowered = value.lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return lowered in ("1", "true", "yes")
            return bool(value)
        if isinstance(current, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(current, float):
            return float(value)
        if isinstance(current, list):
            if isinstance(value, str):
                items = [v.strip() for v in value.split(",") if v.strip()]
            else:
                items = list(value)
            template = current[0] if current else ""
            return [_coerce(key, v, template) for v in items]
        if isinstance(current, str):
            return str(value)
        if isinstance(current, dict):  # a JSON object (CLI) or dict (file), merged over the current one
            update = json.loads(value) if isinstance(value, str) else value
            if not isinstance(update, dict):
                raise ValueError(value)
            return {**current, **update}
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key!r}: cannot use {value!r} as {type(current).__name__}") from None
    return value


def client_mesh_error(mesh: str, needed: int, clients: int, devices: int) -> str | None:
    """Why ``clients`` DTensor clients with ``devices`` devices each cannot form ``mesh`` (``needed``
    devices), or None: a multi-client mesh uses every device of every client."""
    if devices >= 1 and needed == clients * devices:
        return None
    hint = f"; pass --logical-devices {needed // clients}" if needed % clients == 0 else ""
    return (
        f"--mesh {mesh} needs {needed} devices but {clients} DTensor clients x "
        f"{devices} logical devices give {clients * devices}{hint}"
    )


def mesh_dims(teacher: TeacherConfig) -> list[tuple[str, int]]:
    """Mesh axes of the hybrid strategy: ``[("batch", b), ("model", m)]`` (``fc_layout`` 2d) or
    ``[("devices", b*m)]`` (1d: one axis is both the data and the model axis)."""
    sizes = parse_mesh(teacher.mesh)
    if teacher.fc_layout == "2d":
        return [("batch", sizes["batch"]), ("model", sizes["model"])]
    if teacher.fc_layout == "1d":
        return [("devices", sizes["batch"] * sizes["model"])]
    raise ConfigError(f"teacher.fc_layout (--fc-layout) must be 2d or 1d, got {teacher.fc_layout!r}")


def parse_mesh(spec: str) -> dict[str, int]:
    """``"batch=2,model=2"`` -> ``{"batch": 2, "model": 2}`` (order kept)."""
    mesh: dict[str, int] = {}
    for part in spec.split(","):
        name, sep, size = part.partition("=")
        if not sep or not name.strip() or not size.strip().isdigit() or int(size) < 1:
            raise ConfigError(f"--mesh expects name=size pairs like batch=2,model=2, got {spec!r}")
        mesh[name.strip()] = int(size)
    if set(mesh) != {"batch", "model"}:
        raise ConfigError(f"--mesh needs exactly the axes 'batch' and 'model', got {spec!r}")
    return mesh


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every command shares: a config file and generic overrides."""
    parser.add_argument("--config", help="JSON config file (see contract/config.py for fields)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one config field, e.g. --set teacher.steps=100 (repeatable)",
    )


def load_config(args: argparse.Namespace) -> Config:
    """The typed config for a command: defaults < --config file < --set < dedicated flags.

    Dedicated flags are declared with ``dest="section.field"`` and default ``None``.
    """
    cfg = Config.load(args.config) if getattr(args, "config", None) else Config()
    cfg.apply_overrides(getattr(args, "set", []) or [])
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            cfg.set(dest, value)
    return cfg
