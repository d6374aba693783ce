"""File names one stage writes and a later one reads: the one place each is spelled.

Inside an artifact's directory (TFX gives the directory; these name what is in it).
"""

SERVING_MODEL_DIR = "Format-Serving"  # the SavedModel TFX's Trainer convention puts under a Model artifact
TRAIN_REPORT = "train_report.json"  # TeacherTrainer: steps, losses, accuracy, strategy (model_run dir)
PRETRAIN_REPORT = "pretrain_report.json"  # Pretrainer: loss curve, time, events used (model_run dir)
PRETRAIN_CONFIG = "pretrain_config.json"  # the config a launched Pretrainer process reads (model_run dir)
TEACHER_CONFIG = "teacher_config.json"  # the config a launched teacher process reads (model_run dir)
TFLITE_INT8 = "model.tflite"  # LiteConverter's int8 model; also the on-device release and TFLite servable
TFLITE_FLOAT16 = "model_float16.tflite"  # LiteConverter's float16 model, released beside the int8 one
DISTILL_REPORT = "distill_report.json"  # Distiller: params, sparsity, histories, eval accuracies (model_run dir)
LITE_REPORT = "lite_report.json"  # LiteConverter: variants, parity, latency, comparison
VERDICT = "verdict.json"  # IngestGate's and ReleaseGate's decision, in their blessing's directory
VALIDATION = "validation.json"  # ServingValidator: requests, mismatches, problems
PUSH_RECORD = "push.json"  # EventPusher: what was pushed where, or why not
