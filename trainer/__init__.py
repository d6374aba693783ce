"""eventpipe models, distribution strategies, distillation, pruning and TFX module files."""

from contract import tfenv as _tfenv  # noqa: F401  (must precede any TensorFlow import)
