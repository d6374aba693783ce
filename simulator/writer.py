"""Streaming, sharded, parallel writer of simulated events: JSONL manifests + PNG frames.

Events are numbered 0..N-1 and shard ``s`` of ``M`` holds the contiguous range
``[s*N//M, (s+1)*N//M)``, so concatenating the shards in order always yields the same
lines whatever ``M`` is. Work is cut into small chunks rendered by a process pool; each
worker writes its events' PNGs itself and hands back only the manifest lines and counts,
which the parent appends to the shard files in order. Memory stays constant in N.

Output under ``out_dir``::

    events-00000-of-00002.jsonl   one event per line; frames are paths relative to it
    frames/<event_id>/<i>.png     (or, with inline_frames, {"b64": ...} inside the lines)
    simulator.json                parameters, counts per class, label noise, backgrounds
    preview.png                   a contact sheet of a few events per class
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm

from contract.config import SimulatorConfig
from contract.errors import UserError
from simulator.backgrounds import device_view
from simulator.png import encode_png
from simulator.preview import contact_sheet
from simulator.scenes import (
    NUISANCES,
    Archetype,
    RenderedEvent,
    archetypes_for,
    device_name,
    render_event,
)

SUMMARY_FILE = "simulator.json"
PREVIEW_FILE = "preview.png"
FRAMES_DIR = "frames"
CHUNK_EVENTS = 128
PREVIEW_PER_CLASS = 4
IN_PROCESS_BELOW = 300  # events; a pool's start-up costs more than rendering this many


def manifest_name(shard: int, shards: int) -> str:
    return f"events-{shard:05d}-of-{shards:05d}.jsonl"


def shard_bounds(events: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) event ranges, one per shard."""
    return [(s * events // shards, (s + 1) * events // shards) for s in range(shards)]


def validate(cfg: SimulatorConfig) -> None:
    """Raise UserError naming the first unusable simulator setting."""
    if cfg.events < 1:
        raise UserError(f"--events must be >= 1, got {cfg.events}")
    if cfg.frames < 1:
        raise UserError(f"--frames must be >= 1, got {cfg.frames}")
    if cfg.size < 8:
        raise UserError(f"--size must be >= 8 pixels, got {cfg.size}")
    if cfg.channels not in (1, 3):
        raise UserError(f"--channels must be 1 (grayscale) or 3 (RGB), got {cfg.channels}")
    classes = [c.strip() for c in cfg.classes]
    if not classes or any(not c for c in classes):
        raise UserError(
            "--classes needs at least one non-empty class name, e.g. --classes empty,person,vehicle"
        )
    if len(set(classes)) != len(classes):
        raise UserError(f"--classes has duplicates: {','.join(classes)}")
    if cfg.devices < 1:
        raise UserError(f"--devices must be >= 1, got {cfg.devices}")
    if not 0.0 <= cfg.unlabelled_fraction <= 1.0:
        raise UserError(f"--unlabelled-fraction must be in [0, 1], got {cfg.unlabelled_fraction}")
    if not 0.0 <= cfg.label_noise <= 1.0:
        raise UserError(f"--label-noise must be in [0, 1], got {cfg.label_noise}")
    if not 1 <= cfg.shards <= cfg.events:
        raise UserError(f"--shards must be between 1 and --events ({cfg.events}), got {cfg.shards}")
    if cfg.seed < 0:
        raise UserError(f"--seed must be >= 0, got {cfg.seed}")
    if cfg.workers < 0:
        raise UserError(f"--workers must be >= 0 (0 = one per CPU core), got {cfg.workers}")


def _is_ours(name: str) -> bool:
    return name in (SUMMARY_FILE, PREVIEW_FILE, FRAMES_DIR) or (
        name.startswith("events-") and (name.endswith(".jsonl") or name.endswith(".jsonl.tmp"))
    )


def _prepare_out_dir(out_dir: str, frames_dir: bool) -> None:
    """Create ``out_dir``, replacing a previous simulator output; refuse anything else."""
    if os.path.isfile(out_dir):
        raise UserError(f"--out {out_dir} is a file; give a directory")
    os.makedirs(out_dir, exist_ok=True)
    entries = os.listdir(out_dir)
    foreign = sorted(e for e in entries if not _is_ours(e))
    if foreign:
        raise UserError(
            f"--out {out_dir} is not empty and not a simulator output (has {', '.join(foreign[:3])}); "
            "choose a new or empty directory"
        )
    for e in entries:
        path = os.path.join(out_dir, e)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    if frames_dir:
        os.makedirs(os.path.join(out_dir, FRAMES_DIR))


@dataclass
class _ChunkResult:
    lines: str
    by_class: Counter = field(default_factory=Counter)
    by_label: Counter = field(default_factory=Counter)
    noisy: Counter = field(default_factory=Counter)
    by_device: Counter = field(default_factory=Counter)
    tags: Counter = field(default_factory=Counter)
    preview: dict[int, list[int]] = field(default_factory=dict)  # true class -> first event indices

    def add(self, later: _ChunkResult) -> None:
        """Fold in the counts of a chunk that comes later in event order."""
        for name in ("by_class", "by_label", "noisy", "by_device", "tags"):
            getattr(self, name).update(getattr(later, name))
        for cls, idx in later.preview.items():
            keep = self.preview.setdefault(cls, [])
            keep.extend(idx[: PREVIEW_PER_CLASS - len(keep)])


_WORKER: dict = {}


def _init_worker(cfg: SimulatorConfig, out_dir: str) -> None:
    _WORKER["cfg"] = cfg
    _WORKER["out_dir"] = out_dir
    _WORKER["archetypes"] = archetypes_for(cfg.classes)


def save_frames(event: RenderedEvent, out_dir: str) -> list[str]:
    """Write an event's frames as PNGs; returns their paths relative to ``out_dir``."""
    rel_dir = f"{FRAMES_DIR}/{event.event_id}"
    os.makedirs(os.path.join(out_dir, rel_dir), exist_ok=True)
    paths = []
    for i, frame in enumerate(event.frames):
        rel = f"{rel_dir}/{i}.png"
        with open(os.path.join(out_dir, rel), "wb") as f:
            f.write(encode_png(frame))
        paths.append(rel)
    return paths


def manifest_record(event: RenderedEvent, classes: list[str], frames: list) -> dict:
    """The JSONL record; ``frames`` are relative paths or ``{"b64": ...}`` objects.

    ``best_frame`` (0-based) is the frame showing the largest share of the object; it is left
    out for events with no visible object (the negative class, an object hidden or outside the frame).
    """
    record: dict = {"event_id": event.event_id, "device_id": event.device_id, "timestamp": event.timestamp}
    if event.label is not None:
        record["label"] = classes[event.label]
    if event.best_frame is not None:
        record["best_frame"] = event.best_frame
    record["frames"] = frames
    return record


def _render_chunk(bounds: tuple[int, int]) -> _ChunkResult:
    cfg: SimulatorConfig = _WORKER["cfg"]
    out_dir: str = _WORKER["out_dir"]
    archetypes: list[Archetype] = _WORKER["archetypes"]
    classes = cfg.classes
    lines = []
    res = _ChunkResult("")
    for index in range(*bounds):
        ev = render_event(cfg, index, archetypes)
        if cfg.inline_frames:
            frames: list = [{"b64": base64.b64encode(encode_png(f)).decode("ascii")} for f in ev.frames]
        else:
            frames = save_frames(ev, out_dir)
        lines.append(json.dumps(manifest_record(ev, classes, frames)))
        true_name = classes[ev.true_class]
        res.by_class[true_name] += 1
        res.by_label[classes[ev.label] if ev.label is not None else "(unlabelled)"] += 1
        if ev.label is not None and ev.label != ev.true_class:
            res.noisy[f"{true_name}->{classes[ev.label]}"] += 1
        res.by_device[ev.device_id] += 1
        res.tags.update(ev.tags)
        first = res.preview.setdefault(ev.true_class, [])
        if len(first) < PREVIEW_PER_CLASS:
            first.append(index)
    res.lines = "\n".join(lines) + "\n"
    return res


def _tasks(cfg: SimulatorConfig):
    for shard, (start, stop) in enumerate(shard_bounds(cfg.events, cfg.shards)):
        for lo in range(start, stop, CHUNK_EVENTS):
            yield shard, (lo, min(stop, lo + CHUNK_EVENTS))


def _worker_count(cfg: SimulatorConfig, workers: int | None) -> int:
    n = workers if workers is not None else cfg.workers
    if n <= 0:
        n = 1 if cfg.events < IN_PROCESS_BELOW else (os.cpu_count() or 1)
    return max(1, min(n, -(-cfg.events // CHUNK_EVENTS)))


def _content_parameters(cfg: SimulatorConfig) -> dict:
    """The settings that determine the bytes written (``workers`` does not)."""
    params = dataclasses.asdict(cfg)
    params.pop("workers", None)
    return params


def generate(
    out_dir: str,
    cfg: SimulatorConfig | None = None,
    workers: int | None = None,
    progress: bool = True,
    preview: bool = True,
) -> dict:
    """Write ``cfg.events`` simulated events under ``out_dir``; returns the summary.

    ``workers``: processes to render with (default ``cfg.workers``; 0 = one per core,
    or in-process for small sets). Output bytes do not depend on it nor on timing. The
    summary (also saved as ``simulator.json``) holds the parameters and counts per
    class/label/device/nuisance; the returned dict adds ``seconds`` and ``out_dir``.
    """
    cfg = _checked_config(cfg)
    out_dir = os.path.abspath(out_dir)
    _prepare_out_dir(out_dir, frames_dir=not cfg.inline_frames)
    n_workers = _worker_count(cfg, workers)
    started = time.perf_counter()
    totals = _write_manifests(cfg, out_dir, n_workers, progress)
    seconds = time.perf_counter() - started
    summary = _summary(cfg, totals)
    if preview:
        picks = [(cfg.classes[c], totals.preview.get(c, [])) for c in range(len(cfg.classes))]
        contact_sheet(cfg, picks, os.path.join(out_dir, PREVIEW_FILE))
        summary["preview"] = PREVIEW_FILE
    with open(os.path.join(out_dir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return {**summary, "seconds": round(seconds, 3), "workers": n_workers, "out_dir": out_dir}


def _checked_config(cfg: SimulatorConfig | None) -> SimulatorConfig:
    """A validated copy with trimmed class names; the caller's config is left as it was."""
    cfg = dataclasses.replace(cfg or SimulatorConfig())
    cfg.classes = [c.strip() for c in cfg.classes]
    validate(cfg)
    return cfg


def _write_manifests(cfg: SimulatorConfig, out_dir: str, n_workers: int, progress: bool) -> _ChunkResult:
    """Render every chunk and append its lines to its shard in event order; returns the totals.

    Shards are written as ``.tmp`` files and renamed only once every chunk has succeeded.
    """
    totals = _ChunkResult("")
    tasks = list(_tasks(cfg))
    bar = tqdm(
        total=cfg.events, unit="ev", desc="generate", disable=None if progress else True, mininterval=0.5
    )
    shards = _ShardFiles(out_dir, cfg.shards)
    with bar, _chunk_results(cfg, out_dir, n_workers, [b for _, b in tasks]) as results, shards:
        for (shard, (lo, hi)), res in zip(tasks, results, strict=True):
            shards.write(shard, res.lines)
            totals.add(res)
            bar.update(hi - lo)
    shards.publish()
    return totals


@contextlib.contextmanager
def _chunk_results(
    cfg: SimulatorConfig, out_dir: str, n_workers: int, bounds: list[tuple[int, int]]
) -> Iterator[Iterator[_ChunkResult]]:
    """Chunk results in task order, rendered here (one worker) or by a spawn pool ended on exit."""
    if n_workers == 1:
        _init_worker(cfg, out_dir)
        yield map(_render_chunk, bounds)
        return
    pool = multiprocessing.get_context("spawn").Pool(
        n_workers, initializer=_init_worker, initargs=(cfg, out_dir)
    )
    try:
        yield pool.imap(_render_chunk, bounds)
    finally:
        pool.terminate()
        pool.join()


class _ShardFiles:
    """The shard manifests being appended to, one open at a time as ``<name>.tmp``."""

    def __init__(self, out_dir: str, shards: int):
        self.out_dir = out_dir
        self.shards = shards
        self.paths: dict[int, str] = {}
        self.current = -1
        self.handle: TextIO | None = None

    def write(self, shard: int, lines: str) -> None:
        if shard != self.current:
            self.close()
            self.current = shard
            self.paths[shard] = os.path.join(self.out_dir, manifest_name(shard, self.shards))
            self.handle = open(self.paths[shard] + ".tmp", "w", encoding="utf-8")
        self.handle.write(lines)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()

    def __enter__(self) -> _ShardFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def publish(self) -> None:
        """Give the complete shards their final names."""
        for path in self.paths.values():
            os.replace(path + ".tmp", path)


def _summary(cfg: SimulatorConfig, totals: _ChunkResult) -> dict:
    """Parameters, counts per class/label/device/nuisance, archetypes and camera views."""
    archetypes = archetypes_for(cfg.classes)
    unlabelled = totals.by_label.get("(unlabelled)", 0)
    return {
        "generator": "eventpipe.simulator",
        "parameters": _content_parameters(cfg),
        "events": cfg.events,
        "frames": cfg.events * cfg.frames,
        "manifests": [manifest_name(s, cfg.shards) for s in range(cfg.shards)],
        "counts": {
            "by_class": {c: totals.by_class.get(c, 0) for c in cfg.classes},
            "by_label": {c: totals.by_label.get(c, 0) for c in [*cfg.classes, "(unlabelled)"]},
            "labelled": cfg.events - unlabelled,
            "unlabelled": unlabelled,
            "noisy_labels": sum(totals.noisy.values()),
            "noisy_label_pairs": dict(sorted(totals.noisy.items())),
            "by_device": dict(sorted(totals.by_device.items())),
            "nuisances": {n: totals.tags.get(n, 0) for n in NUISANCES},
            "occluded": totals.tags.get("occluded", 0),
            "blurred": totals.tags.get("blurred", 0),
        },
        "classes": {name: arch.describe() for name, arch in zip(cfg.classes, archetypes, strict=True)},
        "devices": {device_name(d, cfg.devices): device_view(cfg.seed, d) for d in range(cfg.devices)},
    }
