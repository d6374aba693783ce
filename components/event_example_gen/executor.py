"""Beam executor of EventExampleGen: runs the ingest graph, then records the artifacts."""

from __future__ import annotations

from typing import Any

from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils

from components.event_example_gen.beam_graph import build_ingest, finish_outputs, ingest_progress
from contract import layout
from contract.config import DataConfig, section_from_json


class Executor(base_beam_executor.BaseBeamExecutor):
    """Reads ``input_base``; writes Examples (+ event_spec.json) and the Quarantine artifact."""

    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        data = section_from_json(DataConfig, exec_properties["data_config"])
        examples = artifact_utils.get_single_instance(output_dict["examples"])
        quarantine = artifact_utils.get_single_instance(output_dict["quarantine"])
        with ingest_progress() as token, self._make_beam_pipeline() as p:
            build_ingest(p, exec_properties["input_base"], data, examples.uri, quarantine.uri, token)
        summary = finish_outputs(examples.uri, quarantine.uri, data)
        examples.split_names = artifact_utils.encode_split_names(
            [s for s in layout.SPLITS if summary["splits"].get(s)]
        )
        examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
        for key in ("read", "accepted", "rejected", "unlabelled"):
            quarantine.set_int_custom_property(key, int(summary[key]))
            examples.set_int_custom_property(key, int(summary[key]))
