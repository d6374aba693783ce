"""File names one stage writes and a later one reads: the one place each is spelled.

Inside an artifact's directory (TFX gives the directory; these name what is in it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SERVING_MODEL_DIR = "Format-Serving"  # the SavedModel TFX's Trainer convention puts under a Model artifact
TRAIN_REPORT = "train_report.json"  # TeacherTrainer: steps, losses, accuracy, strategy (model_run dir)
PRETRAIN_REPORT = "pretrain_report.json"  # Pretrainer: loss curve, time, events used (model_run dir)
PRETRAIN_CONFIG = "pretrain_config.json"  # the config a launched Pretrainer process reads (model_run dir)
TEACHER_CONFIG = "teacher_config.json"  # the config a launched teacher process reads (model_run dir)
TFLITE_INT8 = "model.tflite"  # LiteConverter's int8 model; also the on-device release and TFLite servable
TFLITE_FLOAT16 = "model_float16.tflite"  # LiteConverter's float16 model, released beside the int8 one
DISTILL_REPORT = (
    "distill_report.json"  # Distiller: params, sparsity, histories, eval accuracies (model_run dir)
)
LITE_REPORT = "lite_report.json"  # LiteConverter: variants, parity, latency, comparison
VERDICT = "verdict.json"  # IngestGate's and ReleaseGate's decision, in their blessing's directory
VALIDATION = "validation.json"  # ServingValidator: requests, mismatches, problems
PUSH_RECORD = "push.json"  # EventPusher: what was pushed where, or why not

# The student variants the Distiller writes (also their names in every report).
STUDENT_FLOAT = "student_float"  # dense, distilled
STUDENT_PRUNED = "student_pruned"  # pruning fine-tune, masks stripped
STUDENT_QAT = "student_qat"  # quantization-aware fine-tune: the production student
STUDENT_SCRATCH = "student_scratch"  # the baseline: hard labels only, no teacher


@dataclass(frozen=True)
class DistillerOutput:
    """The Distiller's Model artifact: the Distiller writes it, the LiteConverter and pusher read it::

    Format-Serving/            the production student (QAT, else pruned, else dense)
    student_float/             the dense student's SavedModel, same signatures
    keras/student_float.keras  tf_keras files (the TFLite converter starts from these)
    keras/student_pruned.keras
    keras/student_qat.keras    the QAT weights in the plain architecture (float16's source)
    keras/student_qat.h5       the QAT model itself: wrappers, weights, quantization ranges
    keras/student_scratch.keras
    distill_report.json        params, sparsity, histories, eval accuracy/teacher agreement
    """

    root: str

    @property
    def serving(self) -> str:
        return os.path.join(self.root, SERVING_MODEL_DIR)

    @property
    def float_savedmodel(self) -> str:
        return os.path.join(self.root, STUDENT_FLOAT)

    @property
    def keras_dir(self) -> str:
        return os.path.join(self.root, "keras")

    def keras(self, variant: str) -> str:
        """A variant's tf_keras file (``STUDENT_FLOAT``, ``STUDENT_PRUNED``, ``STUDENT_QAT``,
        ``STUDENT_SCRATCH``)."""
        return os.path.join(self.keras_dir, f"{variant}.keras")

    @property
    def qat_h5(self) -> str:
        """H5, not .keras: the .keras format cannot reload TFMOT's input quantizer."""
        return os.path.join(self.keras_dir, f"{STUDENT_QAT}.h5")

    @property
    def report(self) -> str:
        return os.path.join(self.root, DISTILL_REPORT)
