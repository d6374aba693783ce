"""One line per component as it starts and as it ends, with its time and its headline.

The orchestrators announce each node on the ``absl`` logger ("Component X is running." /
"... is finished." from LocalDagRunner, "node X is ..." from BeamDagRunner), on the thread that
runs it. ``StageLines`` observes those records with a filter (the CLI keeps library logs at
ERROR, so they are not printed) and, when a node ends, reads its outputs from ML Metadata for
the headline: events read and accepted, an accuracy, a parity, a verdict. Lines go to stdout,
plain: output that is not a terminal gets no bar redraws mixed into them (the bars, on stderr,
draw only on a terminal).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from absl import logging as absl_logging

from components.gates.accuracy import overall_accuracy
from contract import files
from pipeline import outputs
from pipeline.summary import load_json
from trainer.teacher.length import steps_text

ANNOUNCED = re.compile(r"^(?:Component|node) (\S+) is (running|finished)\.$")


def _uri(out: outputs.NodeOutputs, key: str) -> str | None:
    uris = out.uris.get(key)
    return uris[0] if uris else None


def _props(out: outputs.NodeOutputs, key: str) -> dict[str, Any]:
    uri = _uri(out, key)
    return out.properties.get(uri, {}) if uri else {}


def _verdict(out: outputs.NodeOutputs, key: str = "blessing") -> str:
    blessed = _props(out, key).get("blessed")
    return "" if blessed is None else ("blessed" if blessed else "NOT blessed")


def _accuracy(out: outputs.NodeOutputs) -> str:
    uri = _uri(out, "evaluation")
    if not uri:
        return ""
    try:
        return f"accuracy {overall_accuracy(uri):.3f}"
    except (OSError, ValueError):
        return ""


def headline(node: str, out: outputs.NodeOutputs) -> str:
    """The one result a person wants from ``node``'s outputs ("" when it has none)."""
    if node == "EventExampleGen":
        p = _props(out, "examples")
        if "read" not in p:
            return ""
        return (
            f"read {p['read']}, accepted {p['accepted']} (unlabelled {p.get('unlabelled', 0)}), "
            f"quarantined {p['rejected']}"
        )
    if node in ("IngestGate", "ReleaseGate", "ServingValidator"):
        return _verdict(out)
    if node == "Pretrainer":
        run = _uri(out, "model_run")
        pre = (load_json(os.path.join(run, files.PRETRAIN_REPORT)) or {}) if run else {}
        if "final_loss" not in pre:
            return ""
        return (
            f"NT-Xent {pre['initial_loss']:.3f} -> {pre['final_loss']:.3f} after {pre.get('steps')} steps "
            f"on {pre['events']['total']} events ({pre.get('strategy')})"
        )
    if node == "TeacherTrainer":
        run = _uri(out, "model_run")
        train = (load_json(os.path.join(run, files.TRAIN_REPORT)) or {}) if run else {}
        if "final_eval_accuracy" not in train:
            return ""
        resumed = f", resumed at step {train['resumed_from_step']}" if train.get("resumed_from_step") else ""
        accuracy = train["final_eval_accuracy"]
        return f"eval accuracy {accuracy:.3f} after {steps_text(train)} ({train.get('strategy')}{resumed})"
    if node in ("TeacherEvaluator", "StudentEvaluator"):
        return ", ".join(x for x in (_accuracy(out), _verdict(out)) if x)
    if node == "Distiller":
        run = _uri(out, "model")  # the report sits beside Format-Serving
        evaluation = ((load_json(os.path.join(run, files.DISTILL_REPORT)) or {}) if run else {}).get(
            "eval"
        ) or {}
        accuracies = [f"{name.replace('student_', '')} {v['accuracy']:.3f}" for name, v in evaluation.items()
                      if isinstance(v, dict) and isinstance(v.get("accuracy"), (int, float))]  # fmt: skip
        return "eval accuracy " + ", ".join(accuracies) if accuracies else ""
    if node == "LiteConverter":
        p = _props(out, "lite")
        if "agreement" not in p:
            return ""
        return (
            f"int8 {p.get('int8_bytes', 0):,} bytes, agrees with float on {p['agreement']:.1%}, "
            f"{_verdict(out, 'lite')}"
        )
    if node == "EventPusher":
        p = _props(out, "pushed_model")
        if not p.get("pushed"):
            return "nothing pushed" if p else ""
        parts = [f"student v{p.get('pushed_version')}"]
        parts += [
            f"{role} v{p[key]}"
            for role, key in (("teacher", "teacher_version"), ("mobile", "mobile_version"))
            if key in p
        ]
        return "pushed " + ", ".join(parts)
    return ""


class StageLines(logging.Filter):
    """Prints the stage lines of one pipeline run while it is installed (``with StageLines(...)``).

    ``lookup(node)``: that node's outputs in this run (None if not recorded yet).
    """

    def __init__(
        self, lookup: Callable[[str], outputs.NodeOutputs | None], stream: TextIO | None = None
    ) -> None:
        super().__init__()
        self._lookup = lookup
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._t0 = time.monotonic()
        self._logger = logging.getLogger("absl")
        self._verbosity = absl_logging.get_verbosity()
        self._clear = "\r\033[K" if self._stream.isatty() else ""  # a bar may be mid-line on a terminal

    def __enter__(self) -> StageLines:
        self._t0 = time.monotonic()
        self._logger.addFilter(self)
        # Let the announcements reach this filter. Through absl's verbosity flag, not the logger's
        # level: TensorFlow's SavedModel export silences absl and then restores the flag's value.
        self._verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.INFO)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._logger.removeFilter(self)
        absl_logging.set_verbosity(self._verbosity)
        with self._lock:
            unfinished = list(self._started)
        for node in unfinished:  # the run stopped while these ran: say so, with how long they ran
            self._line(node, f"stopped after {time.monotonic() - self._started.pop(node):.1f} s", "")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        try:
            found = ANNOUNCED.match(record.getMessage())
        except Exception:  # noqa: BLE001  (a malformed record is not ours to judge)
            return False
        if found:
            node, what = found.groups()
            if what == "running":
                with self._lock:
                    self._started[node] = time.monotonic()
                self._line(node, "started", "")
            else:
                self._finished(node)
        return False  # below ERROR: observed, not printed (the CLI keeps libraries quiet)

    def _finished(self, node: str) -> None:
        with self._lock:
            began = self._started.pop(node, None)
        took = time.monotonic() - began if began is not None else 0.0
        try:
            out = self._lookup(node)
            # The launcher records an execution before running one: none means the node was
            # skipped (its Cond was false, e.g. behind an IngestGate that refused the data).
            state = out.state.lower() if out is not None else "skipped"
            detail = headline(node, out) if out is not None else ""
        except Exception:  # noqa: BLE001  (a line must never break the run: this runs inside its logging)
            state, detail = "finished", ""
        if state == "skipped":
            self._line(node, "skipped", "")
            return
        what = {"complete": "done", "cached": "cached"}.get(state, state)
        self._line(node, f"{what} in {took:.1f} s", detail)

    def _line(self, node: str, what: str, detail: str) -> None:
        elapsed = time.monotonic() - self._t0
        text = f"[{elapsed:6.1f}s] {node:<18} {what}" + (f"  {detail}" if detail else "")
        with self._lock:
            self._stream.write(f"{self._clear}{text}\n")
            self._stream.flush()


def stage_lines(connection_config: Any, newer_than: int) -> StageLines:
    """``StageLines`` for the pipeline run that starts after context id ``newer_than``."""

    def lookup(node: str) -> outputs.NodeOutputs | None:
        return outputs.latest_run(connection_config, newer_than=newer_than).get(node)

    return StageLines(lookup)
