"""bench-quality's held-out scoring: the events it renders and the paired statistics it prints."""

import glob
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(
    0,
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"),
)

import heldout  # noqa: E402

from contract.config import SimulatorConfig  # noqa: E402
from simulator.writer import generate  # noqa: E402

pytestmark = pytest.mark.unit


def test_paired_difference_and_its_interval():
    a = np.array([1, 1, 1, 0, 1, 1, 0, 1])
    b = np.array([1, 0, 1, 0, 0, 1, 0, 1])
    p = heldout.paired(a, b)
    d = a - b
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert p["mean"] == pytest.approx(0.25) and p["events"] == 8
    assert (p["low"], p["high"]) == pytest.approx((0.25 - half, 0.25 + half))
    assert heldout.interval(p) == f"+25.0 [{100 * (0.25 - half):+.1f}, {100 * (0.25 + half):+.1f}] pts"
    assert heldout.paired([1], [0])["mean"] is None and heldout.interval(None) == "-"
    same = heldout.paired(a, a)
    assert same["mean"] == same["low"] == same["high"] == 0.0


def test_pooled_over_seeds_concatenates_the_events():
    seeds = [
        {"correct": {"teacher": [1, 1, 0], "scratch": [0, 1, 0]}},
        {"correct": {"teacher": [1, 0], "scratch": [1, 0]}},
    ]
    pooled = heldout.pooled(seeds)
    assert pooled["teacher-scratch"]["events"] == 5 and pooled["teacher-scratch"]["mean"] == pytest.approx(
        1 / 5
    )
    assert "distilled-scratch" not in pooled  # no seed has both


def test_heldout_events_are_the_ones_a_larger_generate_writes_after_the_run(tmp_path):
    cfg = SimulatorConfig(events=8, seed=3, shards=1)
    generate(str(tmp_path / "all"), cfg, workers=1, progress=False, preview=False)
    written = heldout.write_heldout(str(tmp_path / "held"), seed=3, first=5, count=3, events_in_run=5)
    assert written["events"] == 3 and written["first_index"] == 5
    (bigger,) = glob.glob(str(tmp_path / "all" / "*.jsonl"))
    expected = [json.loads(line) for line in open(bigger)][5:]
    got = [json.loads(line) for line in open(tmp_path / "held" / "heldout.jsonl")]
    assert [r["event_id"] for r in got] == [r["event_id"] for r in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert {k: v for k, v in mine.items() if k != "frames"} == {
            k: v for k, v in theirs.items() if k != "frames"
        }
        for a, b in zip(mine["frames"], theirs["frames"], strict=True):
            with open(tmp_path / "held" / a, "rb") as fa, open(tmp_path / "all" / b, "rb") as fb:
                assert fa.read() == fb.read()
