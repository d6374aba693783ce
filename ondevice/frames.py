"""Decode encoded event frames with PIL and NumPy, without TensorFlow.

The on-device runner and the TFLite backend cannot use ``contract.layout.decode_frames``
(TensorFlow). This module reproduces its semantics so a TFLite model sees what training saw:

- ``""`` entries pad short events: index ``i`` takes frame ``min(i, real - 1)`` where ``real``
  is the number of non-empty entries (so the last real frame repeats);
- frames are converted to the spec's channels (RGB -> gray with the fixed-point weights
  libpng uses under ``tf.io.decode_png(channels=1)``; alpha is dropped);
- uint8 -> float32 as ``x * (1/255)`` (``tf.image.convert_image_dtype``);
- other sizes are resized with half-pixel-centre bilinear interpolation, as
  ``tf.image.resize(method="bilinear")`` does.

PNG frames decode bit-exactly like TensorFlow; JPEG frames may differ by a few grey levels
(TensorFlow's libjpeg uses the fast integer IDCT, PIL the accurate one).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence

import numpy as np
from PIL import Image

from contract.config import DataConfig

# TensorFlow's PNG decoder asks libpng for gray = 0.299 R + 0.587 G + 0.114 B; libpng turns that
# into these 1/32768 fixed-point weights and truncates.
_PNG_GRAY_WEIGHTS = (9797, 19234, 3737)
_UINT8_SCALE = np.float32(1.0 / 255.0)


# Decoded pixels a frame may have (data.max_frame_pixels' default), read from its header first.
MAX_FRAME_PIXELS = DataConfig.max_frame_pixels


class FrameDecodeError(ValueError):
    """An encoded frame is not a PNG/JPEG image PIL can read, or is larger than allowed."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_size(image: Image.Image, data: bytes, max_pixels: int) -> None:
    """Refuse an opened (header-only) image over ``max_pixels``; ingest and both decoders use it."""
    _check_dimensions(*image.size, data, max_pixels)


def _check_dimensions(width: int, height: int, data: bytes, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise FrameDecodeError(
            f"frame ({len(data)} bytes) is {width}x{height} = {width * height} pixels, over the "
            f"{max_pixels}-pixel limit (data.max_frame_pixels); downscale it before sending"
        )


def check_frame_pixels(data: bytes, max_pixels: int = MAX_FRAME_PIXELS) -> None:
    """Refuse an encoded frame whose header declares more than ``max_pixels``, without decoding it.

    For decoders that do not bound what they allocate (``tf.io.decode_image`` in a SavedModel).
    Bytes that are not an image pass: the decoder reports those in its own words.
    """
    if not data:
        return
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        # PNG's first chunk is IHDR at a fixed offset: reading it directly is far cheaper than
        # PIL's open, which matters per frame of every served request (docs/benchmarks.md,
        # "Why the defaults are what they are").
        _check_dimensions(*struct.unpack(">II", data[16:24]), data, max_pixels)
        return
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_size(image, data, max_pixels)
    except FrameDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise FrameDecodeError(f"frame ({len(data)} bytes): {e}") from None
    except (OSError, SyntaxError, ValueError):
        return


def _to_channels(image: Image.Image, channels: int) -> np.ndarray:
    """``image`` as uint8 ``[H, W, channels]``."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: keep the high byte, as TensorFlow's uint8 decode does.
        arr = (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)
        image = Image.fromarray(arr, mode="L")
        mode = "L"
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if channels == 1:
        if mode in ("L", "LA", "1"):
            return np.asarray(image.convert("L"), dtype=np.uint8)[..., None]
        if mode in ("CMYK", "YCbCr"):
            return np.asarray(image.convert("L"), dtype=np.uint8)[..., None]
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint32)
        rc, gc, bc = _PNG_GRAY_WEIGHTS
        gray = (rc * rgb[..., 0] + gc * rgb[..., 1] + bc * rgb[..., 2]) >> 15
        return gray.astype(np.uint8)[..., None]
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_image(data: bytes, channels: int, max_pixels: int = MAX_FRAME_PIXELS) -> np.ndarray:
    """One encoded PNG/JPEG -> uint8 ``[H, W, channels]``; at most ``max_pixels`` (from the header)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            check_size(image, data, max_pixels)
            if image.format == "JPEG" and channels == 1:
                # libjpeg's grayscale output is the luma plane, as tf.io.decode_jpeg(channels=1).
                image.draft("L", image.size)
            image.load()
            return _to_channels(image, channels)
    except FrameDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise FrameDecodeError(f"frame ({len(data)} bytes): {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise FrameDecodeError(f"cannot decode frame ({len(data)} bytes): {e}") from e


def _resize_axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper source indices and lerp weights of TF's half-pixel bilinear resize."""
    scale = in_size / out_size
    coord = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    floor = np.floor(coord)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(coord), in_size - 1).astype(np.int64)
    lerp = (coord - floor).astype(np.float32)
    return lower, upper, lerp


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 ``[H, W, C]`` -> ``[height, width, C]`` like ``tf.image.resize`` (bilinear)."""
    in_h, in_w = image.shape[:2]
    if (in_h, in_w) == (height, width):
        return image
    y0, y1, ly = _resize_axis_weights(in_h, height)
    x0, x1, lx = _resize_axis_weights(in_w, width)
    top = image[y0]
    bottom = image[y1]
    ly = ly[:, None, None]
    lx = lx[None, :, None]
    top_left, top_right = top[:, x0], top[:, x1]
    bottom_left, bottom_right = bottom[:, x0], bottom[:, x1]
    top_row = top_left + (top_right - top_left) * lx
    bottom_row = bottom_left + (bottom_right - bottom_left) * lx
    return (top_row + (bottom_row - top_row) * ly).astype(np.float32)


def decode_event(
    encoded: Sequence[bytes],
    frames: int,
    height: int,
    width: int,
    channels: int,
    max_pixels: int = MAX_FRAME_PIXELS,
) -> np.ndarray:
    """``frames`` encoded images ("" pads) -> float32 ``[frames, height, width, channels]`` in [0, 1]."""
    encoded = list(encoded)
    if len(encoded) > frames:
        encoded = encoded[:frames]
    encoded += [b""] * (frames - len(encoded))
    real = max(sum(1 for e in encoded if len(e) > 0), 1)
    out = np.empty((frames, height, width, channels), dtype=np.float32)
    cache: dict[int, np.ndarray] = {}
    for i in range(frames):
        src = min(i, real - 1)
        if src not in cache:
            data = encoded[src]
            if not data:
                raise FrameDecodeError(f"frame {src} is empty: padding may only follow real frames")
            image = decode_image(data, channels, max_pixels).astype(np.float32) * _UINT8_SCALE
            cache[src] = resize_bilinear(image, height, width)
        out[i] = cache[src]
    return out


def decode_events(
    events: Sequence[Sequence[bytes]],
    frames: int,
    height: int,
    width: int,
    channels: int,
    max_pixels: int = MAX_FRAME_PIXELS,
) -> np.ndarray:
    """A batch of events -> float32 ``[B, frames, height, width, channels]``."""
    out = np.empty((len(events), frames, height, width, channels), dtype=np.float32)
    for b, event in enumerate(events):
        out[b] = decode_event(event, frames, height, width, channels, max_pixels)
    return out


def encode_png(frame: np.ndarray) -> bytes:
    """uint8 ``[H, W, C]`` (C = 1 or 3) -> PNG bytes (used to build warm-up and test inputs)."""
    arr = np.asarray(frame, dtype=np.uint8)
    image = Image.fromarray(
        arr[..., 0] if arr.shape[-1] == 1 else arr, mode="L" if arr.shape[-1] == 1 else "RGB"
    )
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
