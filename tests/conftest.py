"""Shared test setup: Keras 2 before any TensorFlow import, and small generated data sets."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import tfenv  # noqa: E402,F401
