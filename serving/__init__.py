"""eventpipe serving: TF-Serving-compatible server, model manager, on-device TFLite runner."""

from pipeline import tfenv as _tfenv  # noqa: F401  (must precede any TensorFlow import)
