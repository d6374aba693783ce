"""A contact sheet of generated events: one row per class, each event's frames side by side.

Lets a person see at a glance what the data looks like (backgrounds, objects, nuisances)
and whether the classes are distinguishable. Events are re-rendered from their index,
which gives exactly the pixels written to disk.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from contract.config import SimulatorConfig
from simulator.scenes import archetypes_for, render_event

_LABEL_WIDTH = 84
_GAP = 2
_EVENT_GAP = 10
_BACKGROUND = (245, 245, 245)


def contact_sheet(cfg: SimulatorConfig, picks: list[tuple[str, list[int]]], path: str) -> str:
    """Save a PNG with a row per ``(class name, event indices)`` and return ``path``."""
    archetypes = archetypes_for(cfg.classes)
    scale = max(1, -(-72 // cfg.size))  # upscale small frames (nearest) to >= 72 px
    cell = cfg.size * scale
    per_row = max((len(idx) for _, idx in picks), default=0) or 1
    event_w = cfg.frames * cell + (cfg.frames - 1) * _GAP
    header = 14
    row_h = cell + header + 8
    width = _LABEL_WIDTH + per_row * event_w + (per_row - 1) * _EVENT_GAP + 8
    height = row_h * len(picks) + 4
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for row, (name, indices) in enumerate(picks):
        y0 = row * row_h + 4
        draw.text((6, y0 + header + cell // 2 - 6), name, fill=(20, 20, 20))
        for col, index in enumerate(indices):
            ev = render_event(cfg, index, archetypes)
            x0 = _LABEL_WIDTH + col * (event_w + _EVENT_GAP)
            label = "unlabelled" if ev.label is None else cfg.classes[ev.label]
            if ev.label is not None and ev.label != ev.true_class:
                label += ", noisy"
            tags = ",".join(t for t in ev.tags if t != "occluded" and t != "blurred")[:28]
            draw.text((x0, y0), f"{ev.event_id} [{label}] {tags}", fill=(90, 90, 90))
            for i, frame in enumerate(ev.frames):
                rgb = np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame
                tile = Image.fromarray(np.ascontiguousarray(rgb)).resize(
                    (cell, cell), Image.Resampling.NEAREST
                )
                sheet.paste(tile, (x0 + i * (cell + _GAP), y0 + header))
    sheet.save(path, format="PNG")
    return path
