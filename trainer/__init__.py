"""eventpipe trainer: models, parallel training, pre-training, the teacher, distillation and TFLite
(sub-rooms)."""

from contract import tfenv as _tfenv  # noqa: F401  (must precede any TensorFlow import)
