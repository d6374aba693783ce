"""Rendering of one simulated camera event: background, a moving object, and nuisances.

Every event is a pure function of ``(config, index)``: its random generator is seeded
from ``(seed, index)`` alone, so an event's bytes do not depend on which worker or shard
renders it. All K frames of an event are rendered at once as one ``[K, S, S, C]`` array
with shapes drawn from signed distances (a one-pixel ramp gives antialiasing), which
keeps a 32x32x4 event well under a millisecond of numpy work.

Classes get archetypes that differ in silhouette, palette and motion so a small CNN can
tell them apart: ``person`` (tall, walks with swinging legs), ``vehicle`` (wide, wheels,
fast), ``animal`` (four legs, trots diagonally), ``bird`` (small, flaps, flies high),
``package`` (a box that appears and stays); other names get distinct geometric shapes,
hues and motions. A class named ``empty`` (or ``background``/``none``/``nothing``) is the
hard negative: nothing enters, but lighting changes, passing cloud shadows, flashes,
camera shake and heavy sensor noise make the frames change. Objects are also occluded,
blurred and lit differently at random so no single cue gives the class away.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from simulator.backgrounds import LUMA, device_background, shake_margin

NEGATIVE_NAMES = ("empty", "background", "none", "nothing", "negative")
_KIND_SYNONYMS = {
    "person": ("person", "people", "pedestrian", "human", "man", "woman", "child"),
    "vehicle": ("vehicle", "car", "truck", "bus", "van", "automobile"),
    "animal": ("animal", "dog", "cat", "deer", "fox", "pet"),
    "bird": ("bird", "birds", "pigeon", "crow"),
    "package": ("package", "parcel", "box", "delivery"),
}
_SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond")
_MOTIONS = ("slide", "fall", "orbit", "zigzag", "rise", "appear")
NUISANCES = ("lighting", "cloud", "flash", "shake", "noise")

_NOISE_BANK = 1 << 21
_BASE_TIME = 1767571200  # 2026-01-05T00:00:00Z
_SECONDS_PER_EVENT = 11


@dataclass(frozen=True)
class Archetype:
    """How objects of one class look and move."""

    kind: str  # empty | person | vehicle | animal | bird | package | shape
    shape: str = ""  # for kind == "shape"
    motion: str = ""
    hue: float = 0.0  # for kind == "shape"

    def describe(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in ("", 0.0)}


def archetypes_for(classes: list[str] | tuple[str, ...]) -> list[Archetype]:
    """One archetype per class name; names without a known meaning get distinct shapes."""
    out: list[Archetype] = []
    used: set[str] = set()
    generic = 0
    for name in classes:
        key = name.strip().lower()
        kind = next((k for k, names in _KIND_SYNONYMS.items() if key in names), None)
        if key in NEGATIVE_NAMES and "empty" not in used:
            used.add("empty")
            out.append(Archetype("empty"))
        elif kind is not None and kind not in used:
            used.add(kind)
            motion = {
                "person": "walk",
                "vehicle": "drive",
                "animal": "trot",
                "bird": "fly",
                "package": "appear",
            }
            out.append(Archetype(kind, motion=motion[kind]))
        else:
            out.append(
                Archetype(
                    "shape",
                    shape=_SHAPES[generic % len(_SHAPES)],
                    motion=_MOTIONS[(generic * 5 + generic // len(_SHAPES)) % len(_MOTIONS)],
                    hue=round((0.03 + generic * 0.618034) % 1.0, 4),
                )
            )
            generic += 1
    return out


@dataclass
class RenderedEvent:
    """One event's frames (uint8 ``[K, S, S, C]``) and its manifest fields."""

    index: int
    event_id: str
    device_id: str
    timestamp: str
    true_class: int
    label: int | None  # None: unlabelled; may differ from true_class under label noise
    frames: np.ndarray
    tags: list[str] = field(default_factory=list)  # nuisances applied, "occluded", "blurred"
    # Pixels ([K] float) of the object each frame shows after occlusion and clipping; None: no object.
    visible_area: np.ndarray | None = None
    # Pixels ([K] float) the object would cover with nothing in front of it and no frame edge.
    whole_area: np.ndarray | None = None
    best_frame: int | None = None  # the frame showing the largest share of the object (best_frame())


def event_id_width(events: int) -> int:
    return max(6, len(str(max(events - 1, 0))))


def device_name(device: int, devices: int) -> str:
    return f"cam{device:0{max(2, len(str(devices - 1)))}d}"


def _rgb(channels: int, r: float, g: float, b: float) -> np.ndarray:
    col = np.array([r, g, b], dtype=np.float32)
    return col if channels == 3 else np.array([col @ LUMA], dtype=np.float32)


def _hsv(channels: int, h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return _rgb(channels, *rgb)


def _pick(
    rng: np.random.Generator, palette: tuple[tuple[float, float, float], ...], channels: int
) -> np.ndarray:
    r, g, b = palette[int(rng.integers(len(palette)))]
    jitter = rng.uniform(0.9, 1.1)
    return _rgb(channels, min(1.0, r * jitter), min(1.0, g * jitter), min(1.0, b * jitter))


_SHIRTS = (
    (0.8, 0.15, 0.12),
    (0.15, 0.3, 0.75),
    (0.2, 0.6, 0.25),
    (0.9, 0.8, 0.2),
    (0.92, 0.92, 0.9),
    (0.12, 0.12, 0.14),
    (0.55, 0.2, 0.6),
    (0.95, 0.5, 0.1),
)
_PANTS = ((0.1, 0.12, 0.25), (0.15, 0.15, 0.15), (0.35, 0.3, 0.25), (0.3, 0.35, 0.45))
_SKIN = ((0.95, 0.78, 0.65), (0.8, 0.6, 0.45), (0.55, 0.38, 0.26), (0.35, 0.24, 0.17))
_CARS = (
    (0.92, 0.92, 0.92),
    (0.7, 0.72, 0.75),
    (0.08, 0.08, 0.1),
    (0.75, 0.08, 0.08),
    (0.1, 0.2, 0.6),
    (0.95, 0.75, 0.1),
)
_FUR = ((0.55, 0.35, 0.18), (0.85, 0.55, 0.25), (0.45, 0.45, 0.45), (0.12, 0.1, 0.08), (0.9, 0.88, 0.8))
_BIRDS = ((0.2, 0.2, 0.22), (0.6, 0.6, 0.62), (0.35, 0.25, 0.2), (0.9, 0.9, 0.92))
_BOXES = ((0.72, 0.55, 0.35), (0.62, 0.45, 0.28), (0.85, 0.78, 0.62))
_POLES = ((0.25, 0.25, 0.27), (0.4, 0.3, 0.2), (0.55, 0.55, 0.55))


def _coverage(
    sdf: Callable[[np.ndarray, np.ndarray], np.ndarray], u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """How much of each pixel the shape covers (0..1): its signed distance, antialiased over a pixel."""
    alpha = np.subtract(0.5, sdf(u, v), dtype=np.float32)
    np.clip(alpha, 0.0, 1.0, out=alpha)
    return alpha


class _Canvas:
    """K frames being painted, channel-first ``[C, K, S, S]`` so numpy loops run along rows.

    Primitives are painted only inside their bounding box over all frames, so an object
    costs in proportion to its size, not the frame's.

    ``cover`` (``[K, S, S]``, when set) tracks how much of each pixel shows the object: paint
    with ``layer == "object"`` adds its coverage, ``layer == "occluder"`` hides what it covers.
    It is exactly the object's blend weight in the painted pixels, so its per-frame sum is the
    object's visible area in pixels, clipped to the frame. ``whole`` (set with ``cover``) tracks the
    object layer alone on a canvas padded by ``PAD`` frames on each side: the area the object
    would show with nothing in front of it and no frame edge, the denominator of its visible
    fraction.
    """

    PAD = 0.75  # frame sizes of padding around ``whole``: any object partly in the frame fits in it

    def __init__(self, img: np.ndarray):
        self.img = img
        self.size = img.shape[-1]
        self.coords = np.arange(self.size, dtype=np.float32) + 0.5  # pixel centres
        self.cover: np.ndarray | None = None
        self.whole: np.ndarray | None = None
        self.pad = int(np.ceil(self.PAD * self.size))
        self.padded_coords = np.arange(-self.pad, self.size + self.pad, dtype=np.float32) + 0.5
        self.layer = ""  # "object" | "occluder" | "" (not tracked)

    def track_object(self, frames: int) -> None:
        """Start tracking the object's coverage (``cover``, ``whole``); paint it next."""
        padded = self.size + 2 * self.pad
        self.cover = np.zeros((frames, self.size, self.size), np.float32)
        self.whole = np.zeros((frames, padded, padded), np.float32)
        self.layer = "object"

    def _window(
        self,
        cx: np.ndarray,
        cy: np.ndarray,
        ex: float,
        ey: float,
        visible: np.ndarray | None,
        padded: bool = False,
    ):
        """Pixel slices of the shape's bounding box over all frames (on the canvas padded by
        ``pad`` pixels a side when ``padded``), and its pixel centres relative to each frame's
        shape centre."""
        pad = self.pad if padded else 0
        xl, yl = cx.tolist(), cy.tolist()
        if visible is not None:
            shown = visible.tolist()
            xl = [x for x, keep in zip(xl, shown, strict=True) if keep]
            yl = [y for y, keep in zip(yl, shown, strict=True) if keep]
            if not xl:
                return None
        end = self.size + 2 * pad
        x0, x1 = max(0, int(min(xl) - ex - 1) + pad), min(end, int(max(xl) + ex + 2) + pad)
        y0, y1 = max(0, int(min(yl) - ey - 1) + pad), min(end, int(max(yl) + ey + 2) + pad)
        if x0 >= x1 or y0 >= y1:
            return None
        coords = self.padded_coords if pad else self.coords
        u = coords[x0:x1] - cx.reshape(-1, 1, 1)
        v = coords[y0:y1, None] - cy.reshape(-1, 1, 1)
        if visible is not None and len(xl) < len(visible):
            v += np.where(visible, 0.0, 1e4).astype(np.float32).reshape(-1, 1, 1)
        return (slice(y0, y1), slice(x0, x1)), u, v

    def paint(
        self,
        sdf: Callable[[np.ndarray, np.ndarray], np.ndarray],
        cx: np.ndarray,
        cy: np.ndarray,
        extent: tuple[float, float],
        colour: np.ndarray,
        visible: np.ndarray | None = None,
        shade: tuple[float, float] | None = None,
        texture: np.ndarray | None = None,
    ) -> None:
        """Blend ``colour`` ([C]) where ``sdf(u, v)`` (pixels, < 0 inside) covers.

        ``cx``/``cy``: per-frame centre; ``extent``: half width/height of the shape;
        ``shade``: (top offset, height) of a lit-from-above vertical gradient.
        """
        win = self._window(cx, cy, extent[0], extent[1], visible)
        if win is None:
            return
        (ysl, xsl), u, v = win
        alpha = _coverage(sdf, u, v)
        col = colour.reshape(-1, 1, 1, 1)
        if shade is not None:
            g = 1.12 - 0.3 * (v - shade[0]) / max(shade[1], 1.0)
            col = col * np.clip(g, 0.75, 1.15)
        if texture is not None:
            col = col * texture[:, :, ysl, xsl]
        region = self.img[:, :, ysl, xsl]
        delta = col - region
        delta *= alpha
        region += delta
        if self.cover is not None and self.layer:
            cover = self.cover[:, ysl, xsl]
            if self.layer == "object":
                cover += alpha * (1.0 - cover)
            else:
                cover *= 1.0 - alpha
        if self.whole is not None and self.layer == "object":
            self._paint_whole(sdf, cx, cy, extent, visible)

    def _paint_whole(self, sdf, cx, cy, extent, visible) -> None:
        """The object's coverage on the padded canvas: no frame edge clips it, no occluder hides it."""
        win = self._window(cx, cy, extent[0], extent[1], visible, padded=True)
        if win is None:
            return
        (ysl, xsl), u, v = win
        alpha = _coverage(sdf, u, v)
        whole = self.whole[:, ysl, xsl]
        whole += alpha * (1.0 - whole)

    def darken(
        self,
        sdf,
        cx: np.ndarray,
        cy: np.ndarray,
        extent: tuple[float, float],
        strength: float,
        visible: np.ndarray | None = None,
    ) -> None:
        """Multiply by ``1 - strength`` where ``sdf`` covers (a cast shadow)."""
        win = self._window(cx, cy, extent[0], extent[1], visible)
        if win is None:
            return
        (ysl, xsl), u, v = win
        alpha = _coverage(sdf, u, v)
        self.img[:, :, ysl, xsl] *= 1.0 - strength * alpha


def _box(hw: float, hh: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    return lambda u, v: np.maximum(np.abs(u) - hw, np.abs(v) - hh)


def _ellipse(rx: float, ry: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    rx, ry = max(rx, 0.3), max(ry, 0.3)
    m = min(rx, ry)
    return lambda u, v: (np.sqrt((u * (1.0 / rx)) ** 2 + (v * (1.0 / ry)) ** 2) - 1.0) * m


def _shape(shape: str, r: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if shape == "disc":
        return _ellipse(r, r)
    if shape == "square":
        return _box(0.85 * r, 0.85 * r)
    if shape == "triangle":
        h, hw = 2.0 * r, 1.05 * r
        norm = float(np.hypot(h, hw))
        return lambda u, v: np.maximum((np.abs(u) * h - (v + r) * hw) / norm, v - r)
    if shape == "ring":
        disc, t = _ellipse(r, r), max(0.6, 0.28 * r)
        return lambda u, v: np.abs(disc(u, v)) - t
    if shape == "cross":
        t = max(0.6, 0.3 * r)
        a, b = _box(r, t), _box(t, r)
        return lambda u, v: np.minimum(a(u, v), b(u, v))
    if shape == "diamond":
        return lambda u, v: (np.abs(u) + np.abs(v) - 1.2 * r) * 0.7071
    raise ValueError(f"unknown shape {shape!r}")


@dataclass
class _Track:
    """Per-frame ground-contact (or centre) position of the object, and its size."""

    x: np.ndarray  # [K]
    y: np.ndarray  # [K]
    scale: float
    direction: float  # +1 moving right, -1 left
    visible: np.ndarray  # [K] bool: the object is in the scene at frame k


def _track(arch: Archetype, rng: np.random.Generator, k: int, s: int) -> _Track:
    t = np.arange(k, dtype=np.float32) - (k - 1) / 2.0
    direction = 1.0 if rng.random() < 0.5 else -1.0
    visible = np.ones(k, dtype=bool)
    motion = arch.motion
    if arch.kind in ("person", "vehicle", "animal", "package"):
        ground = rng.uniform(0.55, 0.97) * s
        scale = 0.55 + 0.7 * ground / s  # nearer the camera (lower in frame) is bigger
    else:
        ground = rng.uniform(0.25, 0.75) * s
        scale = rng.uniform(0.8, 1.2)
    x_mid = rng.uniform(0.25, 0.75) * s
    speed = {
        "walk": (0.05, 0.1),
        "drive": (0.16, 0.3),
        "trot": (0.07, 0.13),
        "fly": (0.14, 0.24),
        "slide": (0.08, 0.16),
        "fall": (0.08, 0.14),
        "rise": (0.06, 0.12),
        "zigzag": (0.07, 0.12),
        "orbit": (0.0, 0.0),
        "appear": (0.0, 0.0),
    }[motion]
    v = rng.uniform(*speed) * s * direction
    x = x_mid + v * t
    y = np.full(k, ground, dtype=np.float32)
    if motion == "walk":
        y = y + 0.012 * s * np.abs(np.sin(t * 1.7))
    elif motion == "trot":
        y = y + rng.uniform(0.02, 0.05) * s * t * (1 if rng.random() < 0.5 else -1)
    elif motion == "fly":
        y = rng.uniform(0.12, 0.45) * s + 0.04 * s * t**2 - 0.03 * s * t
    elif motion == "fall":
        x = np.full(k, x_mid, dtype=np.float32) + 0.01 * s * t
        y = rng.uniform(0.35, 0.65) * s + abs(v) * t
    elif motion == "rise":
        x = np.full(k, x_mid, dtype=np.float32)
        y = rng.uniform(0.35, 0.65) * s - abs(v) * t
    elif motion == "zigzag":
        y = y + 0.08 * s * np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
    elif motion == "orbit":
        r = rng.uniform(0.12, 0.2) * s
        phase = rng.uniform(0, 2 * np.pi)
        x = x_mid + r * np.cos(phase + 1.2 * direction * t)
        y = ground + r * np.sin(phase + 1.2 * direction * t)
    elif motion == "appear":
        x = np.full(k, x_mid, dtype=np.float32)
        if k > 1:
            visible = np.arange(k) >= int(rng.integers(1, k))
    return _Track(x.astype(np.float32), y.astype(np.float32), float(scale), direction, visible)


@lru_cache(maxsize=4)
def _noise_bank(seed: int) -> np.ndarray:
    """A fixed pool of standard-normal samples; events read windows of it at random offsets.

    Drawing fresh Gaussian noise for every pixel costs more than rendering the rest of
    the event; sensor noise only needs to look random, not be independent across events.
    """
    bank = np.random.default_rng([seed, 0x0150]).standard_normal(_NOISE_BANK, dtype=np.float32)
    bank.setflags(write=False)
    return bank


class _Pen:
    """Paints an object's parts at offsets from its per-frame track position."""

    def __init__(self, canvas: _Canvas, track: _Track):
        self.canvas = canvas
        self.track = track
        self.frames = np.arange(len(track.x), dtype=np.float32)
        self.visible = None if track.visible.all() else track.visible

    def paint(self, sdf, dx, dy, ext, colour, shade=None) -> None:
        self.canvas.paint(sdf, self.track.x + dx, self.track.y + dy, ext, colour, self.visible, shade)

    def shadow(self, rx: float, ry: float, strength: float) -> None:
        """An elliptic ground shadow under the track position."""
        self.canvas.darken(_ellipse(rx, ry), self.track.x, self.track.y, (rx, ry), strength, self.visible)


def _draw_person(pen: _Pen, arch: Archetype, rng: np.random.Generator, s: int, ch: int) -> None:
    h = rng.uniform(0.36, 0.46) * s * pen.track.scale
    w = h * rng.uniform(0.3, 0.38)
    shirt, pants, skin = _pick(rng, _SHIRTS, ch), _pick(rng, _PANTS, ch), _pick(rng, _SKIN, ch)
    pen.shadow(0.55 * w + 0.5, 0.06 * h + 0.5, 0.35)
    swing = (0.18 * w * np.sin(pen.frames * 2.2 + rng.uniform(0, 6.28))).astype(np.float32)
    legw, legh = max(0.35, 0.13 * w), 0.23 * h
    for sign in (-1.0, 1.0):
        pen.paint(_box(legw, legh), sign * (0.22 * w + swing * sign), -legh, (legw, legh), pants)
    pen.paint(_box(0.5 * w, 0.2 * h), 0.0, -0.64 * h, (0.5 * w, 0.2 * h), shirt, (-0.2 * h, 0.4 * h))
    pen.paint(_ellipse(0.12 * h, 0.12 * h), 0.0, -0.9 * h, (0.12 * h, 0.12 * h), skin)


def _draw_vehicle(pen: _Pen, arch: Archetype, rng: np.random.Generator, s: int, ch: int) -> None:
    d = pen.track.direction
    w = rng.uniform(0.42, 0.56) * s * pen.track.scale
    h = w * rng.uniform(0.42, 0.5)
    body, glass, tyre = _pick(rng, _CARS, ch), _rgb(ch, 0.16, 0.2, 0.26), _rgb(ch, 0.05, 0.05, 0.05)
    pen.shadow(0.58 * w, 0.07 * h + 0.5, 0.45)
    pen.paint(_box(0.5 * w, 0.24 * h), 0.0, -0.38 * h, (0.5 * w, 0.24 * h), body, (-0.24 * h, 0.5 * h))
    pen.paint(_box(0.3 * w, 0.2 * h), -0.06 * w * d, -0.76 * h, (0.3 * w, 0.2 * h), body)
    pen.paint(_box(0.24 * w, 0.13 * h), -0.06 * w * d, -0.76 * h, (0.24 * w, 0.13 * h), glass)
    for sign in (-1.0, 1.0):
        pen.paint(_ellipse(0.11 * w, 0.11 * w), sign * 0.3 * w, -0.13 * h, (0.11 * w, 0.11 * w), tyre)
    lamp = 0.04 * w + 0.3
    pen.paint(_ellipse(lamp, lamp), 0.47 * w * d, -0.45 * h, (lamp, lamp), _rgb(ch, 1.0, 0.95, 0.7))


def _draw_animal(pen: _Pen, arch: Archetype, rng: np.random.Generator, s: int, ch: int) -> None:
    d = pen.track.direction
    w = rng.uniform(0.3, 0.4) * s * pen.track.scale
    h = w * 0.62
    fur = _pick(rng, _FUR, ch)
    dark = fur * 0.7
    pen.shadow(0.45 * w, 0.07 * h + 0.5, 0.35)
    gait = (0.06 * w * np.sin(pen.frames * 2.6)).astype(np.float32)
    legw = max(0.35, 0.05 * w)
    for off in (-0.3, -0.18, 0.18, 0.3):
        pen.paint(_box(legw, 0.2 * h), off * w + gait * np.sign(off), -0.2 * h, (legw, 0.2 * h), dark)
    pen.paint(_ellipse(0.4 * w, 0.22 * h), 0.0, -0.55 * h, (0.4 * w, 0.22 * h), fur, (-0.22 * h, 0.44 * h))
    pen.paint(_ellipse(0.15 * w, 0.13 * w), 0.42 * w * d, -0.8 * h, (0.15 * w, 0.13 * w), fur)
    tail = max(0.35, 0.04 * w)
    pen.paint(_box(0.12 * w, tail), -0.45 * w * d, -0.72 * h, (0.12 * w, tail), dark)


def _draw_bird(pen: _Pen, arch: Archetype, rng: np.random.Generator, s: int, ch: int) -> None:
    d = pen.track.direction
    w = rng.uniform(0.14, 0.2) * s * pen.track.scale
    feathers = _pick(rng, _BIRDS, ch)
    flap = (0.35 * np.where(np.arange(len(pen.track.x)) % 2 == 0, 1.0, -1.0)).astype(np.float32)[
        :, None, None
    ]
    wing = _ellipse(0.3 * w, 0.08 * w + 0.3)
    for sign in (-1.0, 1.0):
        # Wing tips bend up or down by frame: the flap.
        pen.paint(
            lambda u, v: wing(u, v + flap * np.abs(u)), sign * 0.28 * w, 0.0, (0.3 * w, 0.2 * w), feathers
        )
    pen.paint(_ellipse(0.2 * w, 0.1 * w + 0.3), 0.0, 0.0, (0.2 * w, 0.1 * w + 0.3), feathers * 0.85)
    head = 0.07 * w + 0.3
    pen.paint(_ellipse(head, head), 0.2 * w * d, -0.05 * w, (head, head), feathers * 0.7)


def _draw_package(pen: _Pen, arch: Archetype, rng: np.random.Generator, s: int, ch: int) -> None:
    w = rng.uniform(0.16, 0.24) * s * pen.track.scale
    h = w * rng.uniform(0.6, 0.9)
    cardboard = _pick(rng, _BOXES, ch)
    pen.shadow(0.6 * w, 0.08 * h + 0.5, 0.4)
    pen.paint(_box(0.5 * w, 0.5 * h), 0.0, -0.5 * h, (0.5 * w, 0.5 * h), cardboard, (-0.5 * h, h))
    tape = max(0.3, 0.07 * w)
    pen.paint(_box(tape, 0.5 * h), 0.0, -0.5 * h, (tape, 0.5 * h), _rgb(ch, 0.85, 0.8, 0.6))


def _draw_shape(pen: _Pen, arch: Archetype, rng: np.random.Generator, s: int, ch: int) -> None:
    r = rng.uniform(0.1, 0.15) * s * pen.track.scale
    colour = _hsv(
        ch, (arch.hue + rng.uniform(-0.03, 0.03)) % 1.0, rng.uniform(0.65, 0.95), rng.uniform(0.7, 1.0)
    )
    off = 0.06 * s  # a drop shadow, down and to the right
    tr = pen.track
    pen.canvas.darken(_ellipse(r, r), tr.x + off, tr.y + off, (r, r), 0.3, pen.visible)
    pen.paint(_shape(arch.shape, r), 0.0, 0.0, (1.25 * r, 1.25 * r), colour, (-r, 2 * r))


_DRAWERS = {
    "person": _draw_person,
    "vehicle": _draw_vehicle,
    "animal": _draw_animal,
    "bird": _draw_bird,
    "package": _draw_package,
    "shape": _draw_shape,
}


def _draw_object(c: _Canvas, arch: Archetype, tr: _Track, rng: np.random.Generator, s: int, ch: int) -> None:
    """Paint the class's object (and its ground shadow) at every frame of ``tr``."""
    draw = _DRAWERS.get(arch.kind)
    if draw is None:
        raise ValueError(f"no drawing for archetype {arch}")
    draw(_Pen(c, tr), arch, rng, s, ch)


def _occluder(c: _Canvas, rng: np.random.Generator, s: int, ch: int, near_x: float) -> None:
    """A static foreground pole or bush that hides part of the scene in every frame."""
    k = c.img.shape[1]
    if rng.random() < 0.5:
        x = np.full(k, near_x + rng.uniform(-0.12, 0.12) * s, np.float32)
        hw = max(0.6, rng.uniform(0.04, 0.08) * s)
        c.paint(_box(hw, s), x, np.full(k, s / 2.0, np.float32), (hw, s / 2.0), _pick(rng, _POLES, ch))
    else:
        x = np.full(k, near_x + rng.uniform(-0.15, 0.15) * s, np.float32)
        rx, ry = rng.uniform(0.15, 0.25) * s, rng.uniform(0.25, 0.4) * s
        leaf = _hsv(ch, rng.uniform(0.22, 0.35), rng.uniform(0.5, 0.8), rng.uniform(0.25, 0.45))
        texture = 1.0 + 0.25 * rng.standard_normal((1, 1, s, s), dtype=np.float32)
        c.paint(_ellipse(rx, ry), x, np.full(k, float(s), np.float32), (rx, ry), leaf, texture=texture)


def _blur(img: np.ndarray, horizontal_only: bool) -> np.ndarray:
    """3-tap box blur of ``[C, K, S, S]`` frames (defocus), or along x only (motion blur)."""
    out = img.copy()
    out[..., 1:-1] = (img[..., :-2] + img[..., 1:-1] + img[..., 2:]) / 3.0
    if not horizontal_only:
        tmp = out.copy()
        out[..., 1:-1, :] = (tmp[..., :-2, :] + tmp[..., 1:-1, :] + tmp[..., 2:, :]) / 3.0
    return out


def _noise(seed: int, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance noise ``[C, K, S, S]``: 80% shared by the channels, 20% per channel."""
    channels, plane = shape[0], shape[1:]
    n = int(np.prod(plane))
    if n * (channels + 1) <= _NOISE_BANK // 2:
        bank = _noise_bank(seed)
        start = int(rng.integers(0, _NOISE_BANK - n * (channels + 1)))
        shared = bank[start : start + n].reshape(plane)
        if channels == 1:
            return shared[None]
        own = bank[start + n : start + n * (channels + 1)].reshape(shape)
    else:
        shared = rng.standard_normal(plane, dtype=np.float32)
        if channels == 1:
            return shared[None]
        own = rng.standard_normal(shape, dtype=np.float32)
    return np.float32(0.89) * shared + np.float32(0.45) * own


MIN_VISIBLE_PIXELS = 1.0  # less than this in every frame: no visible object, no best frame
BEST_FRAME_TIE = 0.02  # frames within 2% of the largest visible fraction tie; the earliest wins


def best_frame(visible_area: np.ndarray | None, whole_area: np.ndarray | None = None) -> int | None:
    """The frame that shows the object best: the largest visible fraction, ties to the earliest.

    The visible fraction is ``visible_area / whole_area`` (what occlusion and the frame edge
    leave of the object); without ``whole_area`` it is the visible area itself. Fractions
    within ``BEST_FRAME_TIE`` (relative) of the largest count as tied, so sub-pixel
    antialiasing does not decide between frames that show the whole object, and a pose (a
    swinging leg) never does: it changes both areas alike. None when no frame shows at least
    ``MIN_VISIBLE_PIXELS`` of it (or there is no object).
    """
    if visible_area is None or len(visible_area) == 0:
        return None
    if float(np.max(visible_area)) < MIN_VISIBLE_PIXELS:
        return None
    shown = np.asarray(visible_area, np.float64)
    if whole_area is not None:
        shown = np.divide(shown, whole_area, out=np.zeros_like(shown), where=np.asarray(whole_area) > 0)
    top = float(np.max(shown))
    return int(np.argmax(shown >= top * (1.0 - BEST_FRAME_TIE)))


def _timestamp(index: int, rng: np.random.Generator) -> str:
    t = _BASE_TIME + index * _SECONDS_PER_EVENT + int(rng.integers(0, _SECONDS_PER_EVENT))
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True)
class _EventFacts:
    """Who filmed an event, what it shows, how it is labelled and when."""

    device: int
    true_class: int
    label: int | None
    timestamp: str


def render_event(cfg, index: int, archetypes: list[Archetype] | None = None) -> RenderedEvent:
    """Render event ``index`` of the data set described by ``cfg`` (a SimulatorConfig).

    The result depends only on ``cfg``'s content fields and ``index``. Every phase draws from
    one generator, so the phases run in a fixed order and each draws what it always drew.
    """
    archetypes = archetypes if archetypes is not None else archetypes_for(cfg.classes)
    rng = np.random.default_rng([cfg.seed, index])
    facts = _event_facts(cfg, index, rng)
    arch = archetypes[facts.true_class]
    negative = arch.kind == "empty"
    nuisance = _choose_nuisances(rng, negative)
    strength = 1.0 if negative else 0.5  # the hard negatives' nuisances are strong, others mild
    img, offsets = _camera_view(cfg, facts.device, rng, shake=nuisance["shake"], negative=negative)
    canvas = _Canvas(img)
    area, whole, tags = _paint_scene(cfg, canvas, arch, rng, offsets, negative)
    _light(cfg, img, canvas.coords, rng, nuisance, strength)
    if rng.random() < 0.15:
        img = _blur(img, horizontal_only=bool(rng.random() < 0.5))
        tags.append("blurred")
    frames = _sensor_readout(img, cfg.seed, rng, noisy=nuisance["noise"], strength=strength)
    tags.extend(name for name in NUISANCES if nuisance[name])
    device_id = device_name(facts.device, cfg.devices)
    return RenderedEvent(
        index=index,
        event_id=f"{device_id}-{index:0{event_id_width(cfg.events)}d}",
        device_id=device_id,
        timestamp=facts.timestamp,
        true_class=facts.true_class,
        label=facts.label,
        frames=frames,
        tags=tags,
        visible_area=area,
        whole_area=whole,
        best_frame=best_frame(area, whole),
    )


def _event_facts(cfg, index: int, rng: np.random.Generator) -> _EventFacts:
    """Camera, class and label (unlabelled, or noisy with ``label_noise``), and timestamp."""
    device = int(rng.integers(cfg.devices))
    true_class = int(rng.integers(len(cfg.classes)))
    label: int | None = true_class
    if rng.random() < cfg.unlabelled_fraction:
        label = None
    elif len(cfg.classes) > 1 and rng.random() < cfg.label_noise:
        label = (true_class + int(rng.integers(1, len(cfg.classes)))) % len(cfg.classes)
    return _EventFacts(device, true_class, label, _timestamp(index, rng))


def _choose_nuisances(rng: np.random.Generator, negative: bool) -> dict[str, bool]:
    """The hard negatives always get one or two nuisances; other events each one sometimes."""
    if negative:
        chosen = set(rng.choice(len(NUISANCES), size=int(rng.integers(1, 3)), replace=False).tolist())
        return {name: (i in chosen) for i, name in enumerate(NUISANCES)}
    return {name: bool(rng.random() < 0.12) for name in NUISANCES}


def _camera_view(
    cfg, device: int, rng: np.random.Generator, *, shake: bool, negative: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The device's background through a (possibly shaking) camera, ``[C, K, S, S]``, and the
    per-frame ``(dy, dx)`` camera offsets."""
    k, s = cfg.frames, cfg.size
    bg = device_background(cfg.seed, device, s, cfg.channels)
    m = shake_margin(s)
    if shake:
        amp = m if negative else max(1, m // 2)
    else:
        amp = 1 if rng.random() < 0.3 else 0  # a little jitter even on a steady mount
    offsets = rng.integers(-amp, amp + 1, size=(k, 2)) if amp else np.zeros((k, 2), np.int64)
    img = np.stack([bg[:, m + dy : m + dy + s, m + dx : m + dx + s] for dy, dx in offsets.tolist()], axis=1)
    return img, offsets


def _paint_scene(
    cfg, canvas: _Canvas, arch: Archetype, rng: np.random.Generator, offsets: np.ndarray, negative: bool
) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """The object (none for the negative class) and perhaps an occluder near it.

    Returns the object's visible pixels per frame, the pixels it would cover unhidden and
    unclipped (both None without an object), and the tags.
    """
    k, s, ch = cfg.frames, cfg.size, cfg.channels
    tags: list[str] = []
    near_x = rng.uniform(0.3, 0.7) * s
    if not negative:
        # The object moves in world coordinates and is seen through the shaken camera.
        tr = _track(arch, rng, k, s)
        tr.x -= offsets[:, 1].astype(np.float32)
        tr.y -= offsets[:, 0].astype(np.float32)
        near_x = float(np.mean(tr.x))
        canvas.track_object(k)
        _draw_object(canvas, arch, tr, rng, s, ch)
    if rng.random() < 0.2:
        canvas.layer = "occluder"
        _occluder(canvas, rng, s, ch, near_x)
        tags.append("occluded")
    canvas.layer = ""
    area = None if canvas.cover is None else canvas.cover.sum(axis=(1, 2), dtype=np.float64)
    whole = None if canvas.whole is None else canvas.whole.sum(axis=(1, 2), dtype=np.float64)
    return area, whole, tags


def _light(
    cfg,
    img: np.ndarray,
    coords: np.ndarray,
    rng: np.random.Generator,
    nuisance: dict[str, bool],
    strength: float,
) -> None:
    """Lighting, in place: exposure and white balance, then any cloud shadow and flash."""
    ch, k = cfg.channels, cfg.frames
    gain = _exposure(rng, k, nuisance, strength)
    tint = 1 + rng.normal(0, 0.04, ch) if ch == 3 else np.ones(1)
    img *= (tint[:, None] * gain[None, :]).astype(np.float32)[:, :, None, None]
    if nuisance["cloud"]:
        _cloud_shadow(img, coords, rng, strength)
    if nuisance["flash"]:
        _flash(img, coords, rng, strength)


def _exposure(rng: np.random.Generator, k: int, nuisance: dict[str, bool], strength: float) -> np.ndarray:
    """Per-frame gain: per-event exposure with a little drift, or a strong change under a nuisance."""
    gain = rng.uniform(0.75, 1.15) * (1 + rng.normal(0, 0.02, k))
    if nuisance["noise"]:
        gain = gain * (1 - rng.uniform(0.25, 0.5) * strength)  # dusk: dark and grainy
    if nuisance["lighting"]:
        if k > 1:
            ramp = rng.uniform(0.2, 0.45) * strength * (1 if rng.random() < 0.5 else -1)
            gain = gain * (1 + ramp * np.linspace(-0.5, 0.5, k))
        else:
            gain = gain * (1 + rng.uniform(-0.3, 0.3) * strength)
    return gain


def _cloud_shadow(img: np.ndarray, coords: np.ndarray, rng: np.random.Generator, strength: float) -> None:
    """A soft shadow drifting across the scene, in place."""
    k, s = img.shape[1], img.shape[-1]
    r = rng.uniform(0.35, 0.7) * s
    cx = rng.uniform(-0.2, 1.2) * s + rng.uniform(0.1, 0.25) * s * (np.arange(k) - (k - 1) / 2)
    cy = rng.uniform(0, 1) * s
    d2 = (coords[None, None, :] - cx[:, None, None].astype(np.float32)) ** 2 + (coords - cy)[
        None, :, None
    ] ** 2
    img *= 1.0 - np.float32(rng.uniform(0.25, 0.5) * strength) * np.exp(d2 * np.float32(-1.0 / (r * r)))


def _flash(img: np.ndarray, coords: np.ndarray, rng: np.random.Generator, strength: float) -> None:
    """A light source (headlights, a torch) glaring into one frame, in place."""
    k, s = img.shape[1], img.shape[-1]
    f = int(rng.integers(k))
    fx, fy, fr = rng.uniform(0, 1) * s, rng.uniform(0, 1) * s, rng.uniform(0.3, 0.8) * s
    d2 = (coords[None, :] - fx) ** 2 + (coords - fy)[:, None] ** 2
    img[:, f] += np.float32(rng.uniform(0.2, 0.45) * strength) * np.exp(d2 * np.float32(-1.0 / (fr * fr)))


def _sensor_readout(
    img: np.ndarray, seed: int, rng: np.random.Generator, *, noisy: bool, strength: float
) -> np.ndarray:
    """Sensor noise and 8-bit quantisation of ``[C, K, S, S]`` light; returns uint8 ``[K, S, S, C]``.

    Noise is always a little, heavy for the noise nuisance (low light); mostly luminance
    (shared by the channels, as after demosaicing), some chroma.
    """
    sigma = rng.uniform(0.03, 0.06) * strength if noisy else rng.uniform(0.004, 0.02)
    img += np.float32(sigma) * _noise(seed, rng, img.shape)
    img *= 255.0
    img += 0.5
    np.clip(img, 0.0, 255.0, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 3, 0))
