"""The one place that pins TensorFlow to Keras 2 (tf_keras).

TFMOT pruning and DTensor layouts only work with Keras 2, and TensorFlow reads
``TF_USE_LEGACY_KERAS`` once, when it is first imported. Every entry point (CLI,
tests, Beam workers, TFX module files, subprocess trainers) imports this module
before anything that may import TensorFlow. It must not import TensorFlow itself.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ INFO/WARNING chatter hides the messages users need to see.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# google-api-core (pulled in by TFX) warns on every import that Python 3.10 is past its support
# window: eight lines before any output of ours. The pinned stack needs 3.10 (TFX 1.16), so the
# warning says nothing a user can act on.
import warnings  # noqa: E402

warnings.filterwarnings(
    "ignore", message=r"You are using a non-supported Python version", category=FutureWarning
)
# google-cloud-aiplatform (also TFX's) warns that the pinned google-cloud-storage 2.x will one day
# be unsupported: nothing to act on while TFX 1.16 pins it.
warnings.filterwarnings(
    "ignore", message=r"Support for google-cloud-storage < 3\.0\.0", category=FutureWarning
)
