"""eventpipe pipeline (the top floor): the pipeline definition, runners, the CLI, summary and report."""

from contract import tfenv as _tfenv  # noqa: F401  (must precede any TensorFlow import)
