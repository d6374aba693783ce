"""The LiteConverter TFX component (a Python-function component; the work is in trainer.lite.convert).

Inputs: the Distiller's student ``model`` (Trainer output: ``Format-Serving/`` plus the Keras
files the converter starts from), the ``examples`` (train events calibrate the int8 model, eval
events check parity) and, optionally, the ``teacher_model`` so the report sets teacher and
students side by side. Output: a ``LiteModels`` artifact holding ``model.tflite`` (int8, the
release), ``model_float16.tflite``, ``lite_report.json`` and the plots; its custom properties
``blessed`` (1 when int8 parity held) and ``agreement`` let downstream gates read the verdict
without opening files.
"""

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components.artifacts import LiteModels
from contract.config import LiteConfig, section_from_json
from trainer.lite.convert import run_lite_conversion


@component
def LiteConverter(
    model: InputArtifact[standard_artifacts.Model],
    examples: InputArtifact[standard_artifacts.Examples],
    lite: OutputArtifact[LiteModels],
    lite_config: Parameter[str],
    teacher_model: InputArtifact[standard_artifacts.Model] = None,
) -> None:
    """Converts the student to int8 and float16 TFLite, checks int8 parity, measures every variant.

    ``lite_config``: the ``lite`` config section (``contract.config.section_json``)."""

    cfg = section_from_json(LiteConfig, lite_config)
    teacher_dir = path_utils.serving_model_path(teacher_model.uri) if teacher_model is not None else None
    report = run_lite_conversion(model.uri, examples.uri, lite.uri, cfg, teacher_dir=teacher_dir)
    parity = report["parity"]
    lite.set_int_custom_property("blessed", int(parity["blessed"]))
    lite.set_float_custom_property("agreement", float(parity["agreement"]))
    lite.set_int_custom_property("int8_bytes", int(report["tflite"]["int8"]["bytes"]["raw"]))
