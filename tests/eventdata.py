"""Tiny hand-made event sets for tests that need exact control over every record."""

from __future__ import annotations

import base64
import io
import json
import os
import zlib

import numpy as np
from PIL import Image


def png(height: int = 8, width: int = 8, channels: int = 3, value: int = 0, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = (rng.integers(0, 256, shape) // 2 + value // 2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def event(event_id: str, label: str | None = "a", frames: int | list = 2, **fields) -> dict:
    """One manifest record; ``frames`` is a count of inline PNGs or the exact frames list."""
    if isinstance(frames, int):
        seed = zlib.crc32(event_id.encode())
        frames = [{"b64": base64.b64encode(png(seed=seed + i)).decode()} for i in range(frames)]
    record = {
        "event_id": event_id,
        "device_id": "cam01",
        "timestamp": "2026-01-05T12:00:00Z",
        "frames": frames,
    }
    if label is not None:
        record["label"] = label
    record.update(fields)
    return record


def write_manifest(directory: str, records: list, name: str = "events.jsonl") -> str:
    """Write records (dicts, or raw strings written verbatim) as a JSONL manifest."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path
