"""eventpipe models, distribution strategies, distillation, pruning and TFX module files."""

from pipeline import tfenv as _tfenv  # noqa: F401  (must precede any TensorFlow import)
