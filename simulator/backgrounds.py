"""Per-device background scenes cut from the real photographs bundled with scikit-image.

A simulated camera is static: every event of a device shares one background, a crop of a
real photograph (so the network sees real textures, edges and colour statistics rather
than flat noise). The crop is a bit larger than the frame so camera shake can move the
view. Only photographs that ship inside the scikit-image wheel are used: nothing is
downloaded, and the files are read directly with PIL so worker processes start fast.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache

import numpy as np
from PIL import Image

# Photographs in skimage/data that look like camera views (outdoor, indoor, textures).
PHOTOS = (
    "rocket.jpg",
    "camera.png",
    "grass.png",
    "coffee.png",
    "brick.png",
    "astronaut.png",
    "gravel.png",
    "motorcycle_left.png",
    "chelsea.png",
    "coins.png",
)

# ITU-R BT.601 luma, the same weights PIL uses for RGB -> L.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def shake_margin(size: int) -> int:
    """Pixels of extra background on each side, the largest camera-shake offset."""
    return max(1, round(0.06 * size))


@lru_cache(maxsize=1)
def _photo_dir() -> str:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed; the simulator needs its bundled photographs")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


@lru_cache(maxsize=len(PHOTOS))
def load_photo(name: str) -> Image.Image:
    """One bundled photograph as an RGB PIL image (cached per process)."""
    path = os.path.join(_photo_dir(), name)
    if not os.path.isfile(path):
        raise RuntimeError(f"scikit-image photograph {path} is missing; reinstall scikit-image")
    with Image.open(path) as im:
        return im.convert("RGB")


def device_view(seed: int, device: int) -> dict:
    """Which photograph camera ``device`` looks at and how: crop box, mirror, tone curve.

    Cheap and independent of frame size, so it doubles as the provenance record.
    """
    rng = np.random.default_rng([seed, 0xB4C6, device])
    # Devices cycle through the photographs (offset by the seed) so neighbours differ.
    name = PHOTOS[(device + seed) % len(PHOTOS)]
    w, h = load_photo(name).size
    side = int(min(w, h) * rng.uniform(0.35, 0.8))
    left = int(rng.integers(0, w - side + 1))
    top = int(rng.integers(0, h - side + 1))
    return {
        "photo": name,
        "crop": [left, top, left + side, top + side],
        "flipped": bool(rng.random() < 0.5),
        "gamma": round(float(rng.uniform(0.8, 1.25)), 3),
    }


@lru_cache(maxsize=256)
def device_background(seed: int, device: int, size: int, channels: int) -> np.ndarray:
    """Camera ``device``'s scene: float32 ``[C, S + 2m, S + 2m]`` in [0, 1], read-only."""
    view = device_view(seed, device)
    out = size + 2 * shake_margin(size)
    image = load_photo(view["photo"]).crop(tuple(view["crop"])).resize((out, out), Image.Resampling.BOX)
    if view["flipped"]:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = (np.asarray(image, dtype=np.float32) / 255.0) ** view["gamma"]
    if channels == 1:
        pixels = (pixels @ LUMA)[..., None]
    pixels = np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32)
    pixels.setflags(write=False)
    return pixels
