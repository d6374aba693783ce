"""The ground floor every room shares: the typed config, the event layout, errors, the TF setup.

Nothing here imports another eventpipe package; every other package may import this one.
"""

from contract import tfenv as _tfenv  # noqa: F401  (must precede any TensorFlow import)
