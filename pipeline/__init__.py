"""eventpipe pipeline: configuration, event layout, pipeline definition, runners, CLI."""

from pipeline import tfenv as _tfenv  # noqa: F401  (must precede any TensorFlow import)
