"""Shared test setup: Keras 2 before any TensorFlow import, and small generated data sets."""

import os
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TESTS))  # the repository's packages
sys.path.insert(0, TESTS)  # shared test helpers (eventdata, repo, productionize_fixtures) from tests/<room>/

from contract import tfenv  # noqa: E402,F401

TIERS = ("unit", "e2e")


def pytest_collection_modifyitems(config, items):
    """Every test belongs to exactly one tier, so ``make test-fast`` (unit) misses nothing by accident."""
    untiered = [
        item.nodeid for item in items if sum(item.get_closest_marker(t) is not None for t in TIERS) != 1
    ]
    if untiered:
        raise RuntimeError(f"tests without exactly one tier marker ({', '.join(TIERS)}): {untiered[:10]}")
