"""report.html: report.json as one self-contained page a person opens after a run.

Everything the page shows comes from report.json (the numbers machines read) or from files it
names (plots, the quarantine, the eval examples); nothing is recomputed differently. Images are
inlined as ``data:`` URIs so the page can be mailed or archived alone, and every string that
reaches the page is escaped: event ids, reasons and paths come from user data.
"""

from __future__ import annotations

import base64
import glob
import html
import io
import json
import math
import os
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

from pipeline.summary import best_frame_line, p50_ms

HTML_FILE = "report.html"
QUARANTINE_EXAMPLES = 6  # quarantined events shown, spread over the reasons
THUMBNAIL_PX = 160  # frames larger than this are scaled down before inlining
MAX_FRAME_BYTES = 8 * 1024 * 1024  # a quarantined "frame" larger than this is not read for a thumbnail
MAX_FRAME_PIXELS = 4096 * 4096
MAX_EXAMPLE_RECORDS = 20_000  # records read to find the best-frame examples' frames (they come first)

# The variants in the order the comparison reads: big teacher down to the shipped int8 file.
VARIANTS = (
    ("teacher", "teacher", ("teacher",)),
    ("scratch", "student from scratch (no teacher)", ("student", "scratch")),
    ("distilled", "student distilled", ("student", "float")),
    ("pruned", "student pruned", ("student", "pruned")),
    ("qat", "student QAT (production float)", ("student", "qat")),
    ("int8", "int8 TFLite (on-device release)", ("tflite", "int8")),
    ("float16", "float16 TFLite (GPU delegates)", ("tflite", "float16")),
)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#1d2430;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}\
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d5dbe3;padding-bottom:4px}
.muted{color:#5d6878}.verdict{padding:12px 16px;border-radius:6px;margin:14px 0;font-size:16px}
.ok{background:#e3f4e6;border:1px solid #6cbf7c}.bad{background:#fbe6e4;border:1px solid #e0877c}
.unknown{background:#eef0f3;border:1px solid #b7bfca}
table{border-collapse:collapse;margin:6px 0 10px}\
th,td{border:1px solid #d5dbe3;padding:3px 8px;text-align:right}
th{background:#f3f5f8}td.l,th.l{text-align:left}code{font-size:12px;word-break:break-all}
.plots img{max-width:100%;margin:4px 12px 4px 0;border:1px solid #e2e6eb}
.frames{display:flex;gap:6px;align-items:flex-start;flex-wrap:wrap}
.frame{text-align:center;font-size:11px}.frame img{width:96px;height:auto;image-rendering:pixelated;
border:3px solid transparent;display:block}
.frame.chosen img{border-color:#d62728}.frame.truth img{outline:2px dashed #2b7a3d;outline-offset:2px}
.event{border:1px solid #e2e6eb;border-radius:6px;padding:8px 10px;margin:8px 0}
.cell-hi{background:#dbe8fb}
"""


def e(value: Any) -> str:
    """A value as escaped HTML text (quotes too: some end up inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _threshold(value: Any) -> str:
    """A gate's threshold: a number, or a bound relative to another model (TFMA change thresholds)."""
    if not isinstance(value, dict):
        return _num(value)
    bound = _num(value.get("lower_bound"))
    if "baseline" not in value:
        return bound
    factor = 1.0 + float(value.get("allowed_relative_change") or 0.0)
    return f"{bound} (= {factor:g} x {value.get('baseline_model', 'baseline')} {_num(value.get('baseline'))})"


def _num(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _or_unknown(value: Any) -> Any:
    return "unknown" if value is None else value


def _kib(n: Any) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"


def _read_bytes(path: str) -> bytes | None:
    """A file's bytes (local or any filesystem TensorFlow knows, e.g. gs://), None if unreadable."""
    try:
        if "://" in path:
            import tensorflow as tf

            with tf.io.gfile.GFile(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except Exception:  # OSError, tf.errors.OpError and friends: the page says the file was unreadable
        return None


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def thumbnail(data: bytes, max_px: int = THUMBNAIL_PX) -> str | None:
    """An encoded frame as an inline PNG (scaled down to ``max_px``), or None if it does not decode.

    Re-encoding through Pillow means the browser only ever gets a PNG that is known to decode:
    a quarantined frame is often broken on purpose.
    """
    from PIL import Image

    if not data or len(data) > MAX_FRAME_BYTES:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_FRAME_PIXELS or not image.width or not image.height:
                return None
            image.load()
            image = image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode)
            image.thumbnail((max_px, max_px))
            out = io.BytesIO()
            image.save(out, format="PNG")
    except Exception:  # Pillow raises many kinds for a broken image; a broken frame gets no thumbnail
        return None
    return png_data_uri(out.getvalue())


def _img(uri: str, alt: str, extra: str = "") -> str:
    return f'<img src="{e(uri)}" alt="{e(alt)}"{extra}>'


def _plot(path: str | None, alt: str, width: int | None = None) -> str:
    """An existing plot PNG inlined, or a note saying which file could not be read."""
    if not path:
        return ""
    data = _read_bytes(path)
    if not data:
        return f'<p class="muted">plot not readable: <code>{e(path)}</code></p>'
    return _img(png_data_uri(data), alt, f' style="width:{int(width)}px"' if width else "")


_LEFT = ' class="l"'


def _table(header: list[str], rows: Iterable[list[str]], left: int = 1) -> str:
    """``rows`` hold already-escaped cells; the first ``left`` columns are left-aligned."""
    head = "".join(f"<th{_LEFT if i < left else ''}>{h}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f"<td{_LEFT if i < left else ''}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _get(rep: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = rep
    for key in path:
        node = (node or {}).get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


# --- sections -------------------------------------------------------------------------------------


def verdict_section(rep: dict[str, Any]) -> str:
    release = rep.get("release")
    gate = rep.get("gate") or {}
    if release:
        if release.get("blessed"):
            head = (
                '<div class="verdict ok"><b>Release: BLESSED</b>: every gate passed; '
                "the student was pushed.</div>"
            )
        else:
            head = '<div class="verdict bad"><b>Release: NOT blessed</b>: the student was not pushed.</div>'
        problems = release.get("problems") or []
        failures = release.get("failures") or []
        out = head
        if problems:
            out += "<ul>" + "".join(f"<li>{e(p)}</li>" for p in problems) + "</ul>"
        if failures:
            rows = [[e(f.get("model")), e(f.get("metric")), e(f.get("slice")), e(_num(f.get("value"))),
                     e(_threshold(f.get("threshold"))), e(f.get("kind"))] for f in failures]  # fmt: skip
            out += _table(["model", "metric", "slice", "value", "threshold", "gate"], rows, left=3)
        return out
    if gate.get("blessed") is False:
        items = "".join(f"<li>{e(p)}</li>" for p in gate.get("problems") or [])
        return (
            '<div class="verdict bad"><b>Stopped at the ingest gate</b>: the events need fixing '
            f"before anything is trained.</div><ul>{items}</ul>"
        )
    return (
        '<div class="verdict unknown"><b>No release verdict</b>: '
        "the run stopped before the release gate.</div>"
    )


def events_section(rep: dict[str, Any]) -> str:
    ev = rep.get("events")
    if not ev:
        return ""
    splits = ev.get("splits") or {}
    rows = [[e(k), e(v)] for k, v in [
        ("read", ev.get("read")), ("accepted", ev.get("accepted")),
        ("quarantined (rejected)", ev.get("rejected")), ("unlabelled", ev.get("unlabelled")),
        ("train split", splits.get("train", 0)), ("eval split", splits.get("eval", 0)),
    ]]  # fmt: skip
    out = "<h2>Events</h2>" + _table(["", "events"], rows)
    reasons = ev.get("rejected_by_reason") or {}
    if reasons:
        out += "<p>Quarantined by reason:</p>" + _table(
            ["reason", "events"], [[e(k), e(v)] for k, v in reasons.items()]
        )
    labels = ev.get("labels") or {}
    if labels:
        out += "<p>Accepted by label:</p>" + _table(
            ["label", "events"], [[e(k), e(v)] for k, v in labels.items()]
        )
    if ev.get("ignored_files"):
        rows = [[e(k), e(v)] for k, v in (ev.get("ignored_by_reason") or {}).items()]
        n = ev["ignored_files"]
        out += f"<p>{e(n)} file{'' if n == 1 else 's'} under the data root not read:</p>" + _table(
            ["why", "files"], rows
        )
    out += statistics_table(rep.get("statistics") or {})
    anomalies = rep.get("anomalies") or []
    out += f"<p>TFDV anomalies: {e(len(anomalies))}</p>"
    if anomalies:
        out += (
            "<ul>"
            + "".join(
                f"<li><code>{e(json.dumps(a, sort_keys=True, default=str))}</code></li>"
                for a in anomalies[:20]
            )
            + "</ul>"
        )
    if rep.get("quarantine"):
        out += quarantine_examples(
            rep["quarantine"], ((rep.get("config") or {}).get("run") or {}).get("data", "")
        )
    return out


def statistics_table(glance: dict[str, Any]) -> str:
    """TFDV statistics at a glance: one row per feature, one column per split."""
    if not glance:
        return ""
    splits = list(glance)

    def cell(row: dict[str, Any] | None) -> str:
        if row is None:
            return "-"
        missing = f", {row['missing']} missing" if row.get("missing") else ""
        if "mean" in row:
            return (
                f"{_num(row['min'], '.4g')} .. {_num(row['max'], '.4g')} "
                f"(mean {_num(row['mean'], '.4g')}){missing}"
            )
        top = ", ".join(f"{value} ({count})" for value, count in row.get("top") or [])
        return f"{row.get('unique')} unique" + (f": {top}" if top else "") + missing

    features = list(dict.fromkeys(r["feature"] for split in splits for r in glance[split]["features"]))
    by_split = {split: {r["feature"]: r for r in glance[split]["features"]} for split in splits}
    rows = [[e(f)] + [e(cell(by_split[split].get(f))) for split in splits] for f in features]
    header = ["feature"] + [e(f"{split} ({glance[split]['examples']} examples)") for split in splits]
    return "<p>TFDV statistics (StatisticsGen) at a glance:</p>" + _table(header, rows)


def read_quarantine(quarantine_uri: str, count: int = QUARANTINE_EXAMPLES) -> list[dict[str, Any]]:
    """Up to ``count`` quarantine entries, one reason after another (round robin), so a few
    duplicates do not hide the one undecodable frame."""
    from components.event_example_gen.beam_graph import QUARANTINE_PREFIX

    by_reason: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(glob.glob(os.path.join(quarantine_uri, QUARANTINE_PREFIX + "*"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                bucket = by_reason.setdefault(str(entry.get("reason")), [])
                if len(bucket) < count:
                    bucket.append(entry)
    chosen: list[dict[str, Any]] = []
    while len(chosen) < count and any(by_reason.values()):
        for reason in sorted(by_reason):
            if by_reason[reason] and len(chosen) < count:
                chosen.append(by_reason[reason].pop(0))
    return chosen


def quarantined_frames(entry: dict[str, Any], data_root: str) -> list[bytes]:
    """The encoded frames of a quarantine entry that can be found: inline ``{"b64"}`` frames, frame
    paths under the data root (never outside it), or a TFRecord record's frames."""
    from contract import layout

    record = entry.get("record")
    if record is None and entry.get("raw"):
        raw = entry["raw"]
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            try:
                from tensorflow.core.example import example_pb2

                example = example_pb2.Example.FromString(base64.b64decode(raw, validate=True))
                return list(example.features.feature[layout.FRAMES].bytes_list.value)
            except Exception:  # not a tf.Example either: no frames to show
                return []
    frames = record.get("frames") if isinstance(record, dict) else None
    if not isinstance(frames, list):
        return []
    root = os.path.realpath(data_root) if data_root else ""
    root_dir = root if os.path.isdir(root) else os.path.dirname(root)
    source = str(entry.get("source") or "")
    file_part = source.rsplit(":", 1)[0] if ":" in source else source
    base = os.path.dirname(os.path.join(root_dir, file_part)) if file_part.endswith(".jsonl") else root_dir
    out = []
    for frame in frames:
        data = None
        if isinstance(frame, dict) and isinstance(frame.get("b64"), str):
            try:
                data = base64.b64decode(frame["b64"], validate=False)
            except ValueError:
                data = None
        elif isinstance(frame, str) and root_dir:
            path = os.path.realpath(os.path.join(base, frame))
            if (
                path.startswith(root_dir + os.sep)
                and os.path.isfile(path)
                and os.path.getsize(path) <= MAX_FRAME_BYTES
            ):
                data = _read_bytes(path)
        out.append(data or b"")
    return out


def quarantine_examples(quarantine_uri: str, data_root: str) -> str:
    try:
        entries = read_quarantine(quarantine_uri)
    except OSError:
        entries = []
    out = f"<p>Quarantine: <code>{e(quarantine_uri)}</code></p>"
    if not entries:
        return out + '<p class="muted">No event was quarantined.</p>'
    out += "<p>A few quarantined events (one reason after another):</p>"
    for entry in entries:
        frames = quarantined_frames(entry, data_root)
        thumbs = []
        for i, data in enumerate(frames[:8]):
            uri = thumbnail(data)
            if uri:
                thumbs.append(f'<div class="frame">{_img(uri, f"frame {i}")}frame {i}</div>')
            else:
                thumbs.append(f'<div class="frame muted">frame {i}:<br>not decodable</div>')
        out += (
            f'<div class="event"><b>{e(entry.get("reason"))}</b>: '
            f"event <code>{e(entry.get('event_id'))}</code> "
            f"from <code>{e(entry.get('source'))}</code><br>"
            f'<span class="muted">{e(entry.get("detail"))}</span>'
            + (f'<div class="frames">{"".join(thumbs)}</div>' if thumbs else "")
            + "</div>"
        )
    return out


def models_section(rep: dict[str, Any]) -> str:
    rows = []
    for _, name, path in VARIANTS:
        v = _get(rep, path)
        if not v:
            continue
        size = (v.get("bytes") or {}).get("raw")
        sparsity = (
            (v.get("sparsity") or {}).get("all_weights") if isinstance(v.get("sparsity"), dict) else None
        )
        rows.append([
            e(name), e(_num(v.get("accuracy"))), e(f"{v['params']:,}" if v.get("params") else "-"),
            e(_kib(size)), e(_kib((v.get("bytes") or {}).get("gzipped"))), e(_num(p50_ms(v), ".2f")),
            e(v.get("format")), e(_num(v.get("best_frame_accuracy"))), e(_num(sparsity, ".2f")),
        ])  # fmt: skip
    if not rows:
        return ""
    out = "<h2>Teacher and students</h2>"
    out += _table(["variant", "eval accuracy", "params", "size", "gzipped", "p50 ms/event", "format",
                   "best frame named", "sparsity"], rows)  # fmt: skip
    out += (
        '<p class="muted">Latency: batch 1, 1 thread, each variant in its own format. Size: each variant\'s '
        "file(s) in that format (a SavedModel directory, a Keras file, a TFLite flatbuffer), so compare "
        "like with like: the TFLite rows with each other, the Keras rows with each other.</p>"
    )
    comparison = rep.get("comparison") or {}
    notes = []
    if comparison.get("kd_gain") is not None:
        worse = " (WORSE than the student trained alone)" if comparison["kd_gain"] < 0 else ""
        notes.append(f"distillation gain (distilled vs scratch): {comparison['kd_gain']:+.1f} points{worse}")
    if comparison.get("teacher_over_scratch_points") is not None:
        worse = (
            " (the teacher is NOT better than the student trained alone)"
            if comparison["teacher_over_scratch_points"] <= 0
            else ""
        )
        notes.append(f"teacher over scratch: {comparison['teacher_over_scratch_points']:+.1f} points{worse}")
    teacher = _get(rep, ("teacher",)) or {}
    if teacher.get("best_frame_events"):
        student = rep.get("student") or {}
        production = student.get(str(student.get("production") or "").replace("student_", "")) or {}
        notes.append(best_frame_line(teacher, production, comparison))
    if comparison.get("teacher_bytes_over_int8"):
        notes.append(f"teacher is {comparison['teacher_bytes_over_int8']:.0f}x the int8 file's size")
    if comparison.get("int8_speedup_over_teacher_savedmodel"):
        notes.append(
            f"int8 is {comparison['int8_speedup_over_teacher_savedmodel']:.1f}x faster than the teacher"
        )
    parity = (rep.get("tflite") or {}).get("parity") or {}
    if parity.get("agreement") is not None:
        notes.append(f"int8 agrees with the float student on {parity['agreement']:.1%} of "
                     f"{parity.get('events', 0)} events "
                     f"({_num(parity.get('eval_agreement'), '.1%')} of the eval split)")  # fmt: skip
    if notes:
        out += "<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>"
    out += (
        '<div class="plots">'
        f"{_plot((rep.get('plots') or {}).get('tradeoff'), 'accuracy vs size and latency')}</div>"
    )
    return out


def classes_section(rep: dict[str, Any]) -> str:
    columns = [(label, _get(rep, path)) for _, label, path in VARIANTS]
    columns = [(label, v) for label, v in columns if v and v.get("class_accuracy")]
    confusion = (rep.get("tflite") or {}).get("confusion_matrix") or {}
    if not columns and not confusion:
        return ""
    out = "<h2>Per-class accuracy and confusion</h2>"
    if columns:
        classes = list(columns[0][1]["class_accuracy"])
        rows = [[e(c)] + [e(_num(v["class_accuracy"].get(c))) for _, v in columns] for c in classes]
        out += _table(["class"] + [e(label) for label, _ in columns], rows)
    if confusion.get("matrix"):
        classes, matrix = confusion["classes"], confusion["matrix"]
        rows = [[e(classes[i])] + [f'<span class="{"cell-hi" if i == j else ""}">{e(n)}</span>'
                                   for j, n in enumerate(row)] for i, row in enumerate(matrix)]  # fmt: skip
        out += (
            "<p>Confusion matrix of the int8 release on the eval split "
            "(rows: true class, columns: predicted):</p>"
        )
        out += _table(["true \\ predicted"] + [e(c) for c in classes], rows)
    out += (
        '<div class="plots">'
        f"{_plot((rep.get('plots') or {}).get('confusion'), 'confusion matrix', 460)}</div>"
    )
    return out


def student_curve(history: dict[str, Any]) -> str | None:
    """The students' per-epoch loss, one line per phase, as an inline PNG (None: nothing recorded)."""
    phases = {
        name: h.get("loss") for name, h in (history or {}).items() if isinstance(h, dict) and h.get("loss")
    }
    if not phases:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    # The phases follow each other (distil, prune, QAT); the scratch baseline runs beside distil.
    start = 0
    for name, losses in phases.items():
        first = 0 if name == "scratch" else start
        ax.plot(range(first + 1, first + len(losses) + 1), losses, "o-", label=name)
        if name != "scratch":
            start += len(losses)
    ax.set_xticks(range(1, max(start, 1) + 1))
    ax.set_xlabel("epoch (phases in order)")
    ax.set_ylabel("training loss")
    ax.set_title("student phases: distillation, pruning, QAT; scratch = hard labels only", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return png_data_uri(out.getvalue())


def training_section(rep: dict[str, Any]) -> str:
    teacher = rep.get("teacher") or {}
    curve = (teacher.get("plots") or {}).get("training_curve")
    history = ((rep.get("student") or {}).get("distillation") or {}).get("history")
    student = student_curve(history) if history else None
    pre = rep.get("pretrain") or {}
    pre_curve = (pre.get("plots") or {}).get("pretrain_curve")
    if not curve and not student and not pre_curve:
        return ""
    out = "<h2>Training curves</h2>"
    if pre_curve:
        out += (
            f"<p>Self-supervised pre-training of the backbone: {e(pre.get('strategy'))}, "
            f"{e(pre.get('steps'))} steps "
            f"on {e((pre.get('events') or {}).get('total'))} events (labels unread), NT-Xent "
            f"{e(_num(pre.get('initial_loss')))} to {e(_num(pre.get('final_loss')))}.</p>"
            + '<div class="plots">'
            + _plot(pre_curve, "pre-training curve")
            + "</div>"
        )
    if teacher.get("steps"):
        best = teacher.get("best") or {}
        out += (
            f"<p>Teacher: {e(teacher.get('strategy'))}, "
            + e(teacher["length"])
            + (f", best eval loss at step {e(best.get('step'))}" if best else "")
            + f", final loss {e(_num(teacher.get('final_loss')))}.</p>"
        )
    out += '<div class="plots">' + _plot(curve, "teacher training curve")
    if student:
        out += _img(student, "student training curves")
    return out + "</div>"


def example_frames(examples_uri: str, event_ids: list[str]) -> dict[str, list[bytes]]:
    """The encoded frames of ``event_ids`` from the eval split (read in split order; the examples
    report.json names are the first eval events, so this stops early)."""
    import tensorflow as tf

    from contract import layout

    wanted, found = set(event_ids), {}
    files = sorted(layout.split_files(examples_uri, layout.EVAL))
    if not files or not wanted:
        return found
    for n, record in enumerate(tf.data.TFRecordDataset(files, compression_type="GZIP")):
        if n >= MAX_EXAMPLE_RECORDS or len(found) == len(wanted):
            break
        feats = tf.train.Example.FromString(record.numpy()).features.feature
        event_id = feats[layout.EVENT_ID].bytes_list.value[0].decode("utf-8", "replace")
        if event_id in wanted:
            found[event_id] = list(feats[layout.FRAMES].bytes_list.value)
    return found


def best_frames_section(rep: dict[str, Any]) -> str:
    examples = rep.get("best_frame_examples") or {}
    events = examples.get("events") or []
    if not events:
        return ""
    try:
        frames = example_frames(rep.get("examples") or "", [ev["event_id"] for ev in events])
    except Exception:  # the examples artifact moved or is unreadable: the table still says what was chosen
        frames = {}
    out = (
        "<h2>Best-frame examples</h2><p>Eval events as the production student "
        f"(<code>{e(examples.get('model'))}</code>) saw them: the frame it names as best has a "
        '<span style="color:#d62728">red border</span>, the true best frame (simulator ground truth, '
        'when known) a <span style="color:#2b7a3d">dashed green outline</span>.</p>'
    )
    for ev in events:
        weights = ev.get("frame_weights") or []
        thumbs = []
        for i, data in enumerate(frames.get(ev["event_id"], [])):
            uri = thumbnail(data)
            classes = "frame" + (" chosen" if i == ev.get("best_frame") else "") + (
                " truth" if i == ev.get("true_best_frame") else "")  # fmt: skip
            caption = f"frame {i}" + (f" w={weights[i]:.2f}" if i < len(weights) else "")
            body = _img(uri, caption) if uri else "not decodable<br>"
            thumbs.append(f'<div class="{classes}">{body}{e(caption)}</div>')
        right = "right" if ev.get("label") == ev.get("predicted") else "wrong"
        int8 = (
            f"; int8: {e(ev['int8_predicted'])}, frame {e(ev.get('int8_best_frame'))}"
            if ev.get("int8_predicted")
            else ""
        )
        out += (
            f'<div class="event">event <code>{e(ev["event_id"])}</code>: label <b>{e(ev.get("label"))}</b>, '
            f"predicted <b>{e(ev.get('predicted'))}</b> "
            f"({right}, p={e(_num(ev.get('probability'), '.2f'))}), "
            f"best frame {e(ev.get('best_frame'))} "
            f"(true: {e(_or_unknown(ev.get('true_best_frame')))}){int8}"
            f'<div class="frames">{"".join(thumbs)}</div></div>'
        )
    served = rep.get("serving_check") or {}
    if served.get("ok"):
        out += (
            f"<p>Served check: <code>{e(served.get('url'))}</code> "
            f"answered event <code>{e(served.get('event_id'))}</code> "
            f"(label {e(served.get('label'))}) with {e(served.get('predicted'))}, best frame "
            f"{e(served.get('best_frame'))}, in {e(served.get('milliseconds'))} ms.</p>"
        )
    elif served:
        out += f"<p>Served check FAILED: {e(served.get('error'))}</p>"
    return out


def _path_cell(path: Any, report_dir: str) -> str:
    """A path as code, linked (relative to the page) where it is a local file or directory."""
    code = f"<code>{e(path)}</code>"
    if not isinstance(path, str) or "://" in path or not os.path.exists(path):
        return code
    return f'<a href="{e(urllib.parse.quote(os.path.relpath(path, report_dir)))}">{code}</a>'


def locations_section(rep: dict[str, Any], report_path: str) -> str:
    report_dir = os.path.dirname(os.path.abspath(report_path))
    rows: list[list[str]] = [["report.json", _path_cell(report_path, report_dir)]]
    teacher = rep.get("teacher") or {}
    for label, value in (
        ("examples", rep.get("examples")), ("quarantine", rep.get("quarantine")),
        ("teacher model", teacher.get("model")), ("teacher train report", teacher.get("train_report")),
        ("TensorBoard logs", teacher.get("tensorboard")),
        ("int8 TFLite (candidate)", (rep.get("tflite") or {}).get("release")),
        ("float16 TFLite", ((rep.get("tflite") or {}).get("float16") or {}).get("path")),
    ):  # fmt: skip
        if value:
            rows.append([e(label), _path_cell(value, report_dir)])
    validation = rep.get("serving_validation") or {}
    if validation:
        rows.append(["serving validation", e("passed" if validation.get("blessed") else "failed")])
    push = rep.get("push") or {}
    for dest in push.get("destinations") or []:
        rows.append(
            [
                e(f"pushed {dest.get('role')}"),
                f"{_path_cell(dest.get('path'), report_dir)} (version {e(dest.get('version'))})",
            ]
        )
    if push and not push.get("pushed"):
        rows.append(["pushed", e("nothing: " + "; ".join(push.get("reasons") or []))])
    return "<h2>Where every model went</h2>" + _table(["what", "where"], rows, left=2)


def provenance_line(rep: dict[str, Any]) -> str:
    """When the run finished, from what code, under which ML Metadata run, and how long it took."""
    run = rep.get("run") or {}
    metadata = run.get("metadata") or {}
    parts = [
        f"finished {run['finished_utc']}" if run.get("finished_utc") else None,
        f"eventpipe {run['eventpipe_version']}" if run.get("eventpipe_version") else None,
        f"commit {run['commit']}" if run.get("commit") else None,
        f"ML Metadata run {metadata['run_id']} (context {metadata.get('context_id')})"
        if metadata.get("run_id")
        else None,
        f"took {rep['seconds']} s" if rep.get("seconds") is not None else None,
    ]
    return "; ".join(e(p) for p in parts if p)


def contents(body: str) -> tuple[str, str]:
    """``body`` with an id on every section heading, and a contents list linking to them."""
    entries: list[tuple[str, str]] = []

    def anchor(match: re.Match) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"<[^>]+>", "", match.group(1)).lower()).strip("-")
        entries.append((slug, match.group(1)))
        return f'<h2 id="{slug}">{match.group(1)}</h2>'

    body = re.sub(r"<h2>(.*?)</h2>", anchor, body)
    nav = " · ".join(f'<a href="#{slug}">{title}</a>' for slug, title in entries)
    return body, f'<nav class="muted">Contents: {nav}</nav>' if entries else ""


def render(rep: dict[str, Any], report_path: str) -> str:
    """The whole page for report.json's content ``rep`` (which lives at ``report_path``)."""
    sections, nav = contents(
        verdict_section(rep)
        + events_section(rep)
        + models_section(rep)
        + classes_section(rep)
        + training_section(rep)
        + best_frames_section(rep)
        + locations_section(rep, report_path)
    )
    body = (
        "<h1>eventpipe run</h1>"
        f'<div class="muted"><a href="{e(os.path.basename(report_path))}">report.json</a> '
        f"(<code>{e(report_path)}</code>); {provenance_line(rep)}</div>" + nav + sections
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>eventpipe report</title>'
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def write(rep: dict[str, Any], report_path: str) -> str:
    """Write report.html beside ``report_path``; return its path."""
    path = os.path.join(os.path.dirname(os.path.abspath(report_path)), HTML_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render(rep, report_path))
    os.replace(tmp, path)
    return path
