"""The one eventpipe TFX pipeline, built from the typed config with every path injected.

Like the TFX penguin example, nothing here knows where it runs: the data root, pipeline
root, metadata connection, Beam arguments and push destinations are parameters, so the same
definition runs under LocalDagRunner, BeamDagRunner and Kubeflow.
"""

from __future__ import annotations

from typing import Any

from contract import layout
from contract.config import Config, section_json, trainer_custom_config

PIPELINE_NAME = "eventpipe"

# Component ids, in pipeline order; `through` cuts the pipeline after one of the stages.
STAGES = ("validate", "train", "productionize", "push")
# TFX, TFDV and the components are imported inside the functions below: the CLI imports this
# module for STAGES and PIPELINE_NAME, and `eventpipe --help` must not start TensorFlow.


def _stats_options() -> Any:
    """TFDV options: per-event identifiers are unique by design and carry no distribution.

    Left in, SchemaGen would turn the few ids of a small train split into a string domain and
    ExampleValidator would then flag every eval id as an anomaly.
    """
    import tensorflow_data_validation as tfdv

    features = [
        layout.FRAMES, layout.FRAME_COUNT, layout.HEIGHT, layout.WIDTH, layout.CHANNELS,
        layout.LABEL, layout.LABEL_NAME, layout.DEVICE_ID,
    ]  # fmt: skip
    return tfdv.StatsOptions(feature_allowlist=features)


def create_pipeline(
    config: Config,
    *,
    data_root: str,
    pipeline_root: str,
    metadata_connection_config: Any | None,
    beam_pipeline_args: list[str],
    serving_base: str,
    mobile_base: str,
    through: str = "push",
    pipeline_name: str = PIPELINE_NAME,
) -> Any:
    """Build the pipeline up to and including stage ``through`` (one of STAGES).

    ``serving_base`` / ``mobile_base``: where blessed models are pushed (TF Serving model base
    path layout / on-device release layout); the runners pass ``Config.serving_base`` and
    ``Config.mobile_base``.
    """
    from tfx import v1 as tfx

    from components.event_example_gen.component import EventExampleGen
    from components.ingest_gate.component import IngestGate

    if through not in STAGES:
        raise ValueError(f"through must be one of {STAGES}, got {through!r}")

    example_gen = EventExampleGen(input_base=data_root, data=config.data)
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"], stats_options=_stats_options()
    )
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"],
        infer_feature_shape=False,
        exclude_splits=["eval", "unlabelled"],
    )
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"],
        exclude_splits=["unlabelled"],
    )
    ingest_gate = IngestGate(
        quarantine=example_gen.outputs["quarantine"],
        anomalies=example_validator.outputs["anomalies"],
        data_config=section_json(config.data),
    )
    components = [example_gen, statistics_gen, schema_gen, example_validator, ingest_gate]
    # The gate's verdict is an artifact, not an exception: everything after it runs only when it
    # blessed the data, and a refused run ends with the verdict recorded for the CLI to read.
    with tfx.dsl.Cond(ingest_gate.outputs["blessing"].future()[0].custom_property("blessed") == 1):
        components += _after_ingest(
            config, through, example_gen, schema_gen, serving_base=serving_base, mobile_base=mobile_base
        )

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=config.run.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args,
    )


def _after_ingest(
    config: Config, through: str, example_gen: Any, schema_gen: Any, *, serving_base: str, mobile_base: str
) -> list[Any]:
    """The stages after validation, up to and including ``through``."""
    components: list[Any] = []
    if STAGES.index(through) >= STAGES.index("train"):
        training = _training(config, example_gen, schema_gen)
        teacher, teacher_evaluator = training[-2:]
        components += training
    if STAGES.index(through) >= STAGES.index("productionize"):
        distiller, last_blessed, student_evaluator, lite = _productionize(
            config, example_gen, schema_gen, teacher
        )
        components += [distiller, last_blessed, student_evaluator, lite]
    if STAGES.index(through) >= STAGES.index("push"):
        components += _release(
            config, example_gen, teacher, teacher_evaluator, distiller, student_evaluator, lite,
            serving_base=serving_base, mobile_base=mobile_base,
        )  # fmt: skip
    return components


def _training(config: Config, example_gen: Any, schema_gen: Any) -> list[Any]:
    """The teacher: hybrid-parallel training in a child process, then TFMA on the eval split.

    With ``pretrain.enabled`` a Pretrainer (a stock Trainer over the same examples) comes first
    and its model is the teacher's ``base_model``: the teacher starts from the pre-trained
    backbone, and ML Metadata links the two.
    """
    from tfx import v1 as tfx

    from components.gates.accuracy import eval_config

    pretrainer = None
    if config.pretrain.enabled:
        pretrainer = tfx.components.Trainer(
            run_fn="trainer.pretrain.entry.run_fn",
            examples=example_gen.outputs["examples"],  # all splits; it reads train + unlabelled
            schema=schema_gen.outputs["schema"],
            train_args=tfx.proto.TrainArgs(num_steps=config.pretrain.steps or None),
            eval_args=tfx.proto.EvalArgs(num_steps=0),
            custom_config=trainer_custom_config(config, "data", "teacher", "pretrain"),
        ).with_id("Pretrainer")
    extra = {"base_model": pretrainer.outputs["model"]} if pretrainer is not None else {}
    teacher = tfx.components.Trainer(
        run_fn="trainer.teacher.entry.run_fn",
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        # The child plans its own length (epochs over the train split, or teacher.steps).
        train_args=tfx.proto.TrainArgs(num_steps=config.teacher.steps or None),
        eval_args=tfx.proto.EvalArgs(num_steps=config.teacher.eval_batches),
        custom_config=trainer_custom_config(config, "data", "teacher"),
        **extra,
    ).with_id("TeacherTrainer")
    teacher_evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=teacher.outputs["model"],
        eval_config=eval_config(config.gates, with_baseline=False),
    ).with_id("TeacherEvaluator")
    return [c for c in (pretrainer, teacher, teacher_evaluator) if c is not None]


def _productionize(config: Config, example_gen: Any, schema_gen: Any, teacher: Any) -> list[Any]:
    """Distil + prune the student from the teacher, then judge it against the last blessed one."""
    from tfx import v1 as tfx

    from components.gates.accuracy import eval_config
    from components.lite_converter.component import LiteConverter

    distiller = tfx.components.Trainer(
        run_fn="trainer.distill.entry.run_fn",
        examples=example_gen.outputs["examples"],  # all splits: unlabelled events feed distillation
        schema=schema_gen.outputs["schema"],
        base_model=teacher.outputs["model"],  # the teacher
        custom_config=trainer_custom_config(config, "data", "student"),
    ).with_id("Distiller")
    last_blessed = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model, producer_component_id="Distiller"),
        model_blessing=tfx.dsl.Channel(
            type=tfx.types.standard_artifacts.ModelBlessing, producer_component_id="ReleaseGate"
        ),
    ).with_id("LastBlessedStudent")
    student_evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=distiller.outputs["model"],
        baseline_model=last_blessed.outputs["model"],
        eval_config=eval_config(config.gates, with_baseline=True),
    ).with_id("StudentEvaluator")
    lite = LiteConverter(
        model=distiller.outputs["model"],
        examples=example_gen.outputs["examples"],
        teacher_model=teacher.outputs["model"],
        lite_config=section_json(config.lite),
    )
    return [distiller, last_blessed, student_evaluator, lite]


def _release(
    config: Config, example_gen: Any, teacher: Any, teacher_evaluator: Any, distiller: Any,
    student_evaluator: Any, lite: Any, *, serving_base: str, mobile_base: str,
) -> list[Any]:  # fmt: skip
    """Load the student in the real server, decide the release, push only what is blessed."""
    from components.pusher.component import EventPusher
    from components.release_gate.component import ReleaseGate
    from components.serving_validator.component import ServingValidator

    serving_validator = ServingValidator(
        model=distiller.outputs["model"],
        examples=example_gen.outputs["examples"],
        serving_config=section_json(config.serving),
    )
    release_gate = ReleaseGate(
        teacher_evaluation=teacher_evaluator.outputs["evaluation"],
        teacher_blessing=teacher_evaluator.outputs["blessing"],
        student_evaluation=student_evaluator.outputs["evaluation"],
        student_blessing=student_evaluator.outputs["blessing"],
        student_model=distiller.outputs["model"],
        lite=lite.outputs["lite"],
        infra_blessing=serving_validator.outputs["blessing"],
        gates_config=section_json(config.gates),
    )
    pusher = EventPusher(
        model=distiller.outputs["model"],
        model_blessing=release_gate.outputs["blessing"],
        teacher_model=teacher.outputs["model"],
        lite=lite.outputs["lite"],
        infra_blessing=serving_validator.outputs["blessing"],
        examples=example_gen.outputs["examples"],
        serving_base=serving_base,
        mobile_base=mobile_base,
        serving_config=section_json(config.serving),
    )
    return [serving_validator, release_gate, pusher]
