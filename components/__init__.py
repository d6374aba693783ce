"""eventpipe custom TFX components and their executors."""

from pipeline import tfenv as _tfenv  # noqa: F401  (must precede any TensorFlow import)
