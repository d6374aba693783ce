"""eventpipe serving: the TF-Serving-compatible server (REST and gRPC) and its model manager."""

from contract import tfenv as _tfenv  # noqa: F401  (must precede any TensorFlow import)
