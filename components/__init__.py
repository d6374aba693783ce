"""eventpipe custom TFX components and their executors."""

from contract import tfenv as _tfenv  # noqa: F401  (must precede any TensorFlow import)
