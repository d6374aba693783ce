"""The teacher's eval check scores every batch size, one-frame events and a last batch of one included."""

from __future__ import annotations

import subprocess
import sys

import pytest
from repo import REPO

pytestmark = pytest.mark.e2e

# Its own process: the failure this guards against is a native crash (SIGSEGV), which would
# take the test session down with it.
SCRIPT = """
import sys
from contract import layout
from contract.config import TeacherConfig
from fixtures.teacher_data import write_examples
from trainer.models.teacher import build_teacher
from trainer.teacher.loop import evaluate

root = sys.argv[1]
spec = write_examples(root, train=1, eval=33, frames=1, size=28, channels=1,
                      classes=tuple(f"c{i}" for i in range(10)))
files = layout.split_files(root, layout.EVAL)
model = build_teacher(spec, TeacherConfig())
scores = evaluate(model, files, spec, batch_size=32)  # batches of 32 and 1
again = evaluate(model, files, spec, batch_size=32)  # the traced function is reused
assert scores["events"] == again["events"] == 33, scores
print("scored", scores["events"], round(scores["loss"], 6), round(again["loss"], 6))
"""


def test_one_frame_events_in_a_last_batch_of_one_are_scored(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "examples")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-3000:]}"
    words = done.stdout.split()
    assert words[:2] == ["scored", "33"], done.stdout
    assert words[2] == words[3]  # the same weights score the same on a second check
