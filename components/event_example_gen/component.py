"""The EventExampleGen TFX component: raw events -> Examples + Quarantine."""

from __future__ import annotations

from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import Channel, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.artifacts import Quarantine
from components.event_example_gen.executor import Executor
from contract.config import DataConfig, section_json


class EventExampleGenSpec(ComponentSpec):
    PARAMETERS = {
        "input_base": ExecutionParameter(type=str),
        "data_config": ExecutionParameter(type=str),  # JSON of contract.config.DataConfig
    }
    INPUTS = {}
    OUTPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "quarantine": ChannelParameter(type=Quarantine),
    }


class EventExampleGen(base_beam_component.BaseBeamComponent):
    """Ingests JSONL manifests, image-folder trees or layout TFRecords; nothing is dropped silently."""

    SPEC_CLASS = EventExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_base: str, data: DataConfig) -> None:
        super().__init__(
            spec=EventExampleGenSpec(
                input_base=input_base,
                data_config=section_json(data),
                examples=Channel(type=standard_artifacts.Examples),
                quarantine=Channel(type=Quarantine),
            )
        )
