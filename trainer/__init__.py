"""eventpipe trainer: models, parallel training, the teacher's training and productionization (sub-rooms)."""

from contract import tfenv as _tfenv  # noqa: F401  (must precede any TensorFlow import)
