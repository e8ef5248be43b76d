"""The one policy for opening user images (convert, predict): a pixel limit checked from the
file header, before any pixel is decoded, so a small file declaring a huge image (a 2.6 MB PNG
of 30000x30000) is refused with the same clear error everywhere instead of exhausting memory.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.core.errors import PipelineError

#: Largest image accepted, in pixels: Pillow's own decompression-bomb limit (2 x its
#: MAX_IMAGE_PIXELS), which the convert stage has always applied. ~540 MB decoded as RGB.
MAX_PIXELS = 178_956_970
#: Image modes holding more than 8 bits per channel: scaled to 8 bits, not clipped.
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageTooLarge(PipelineError):
    """An image over :data:`MAX_PIXELS`."""


def check_pixels(width: int, height: int, name: str) -> None:
    """ImageTooLarge when a ``width`` x ``height`` image is over the limit."""
    if width * height > MAX_PIXELS:
        raise too_large(name, f"{width}x{height} = {width * height:,}")


def too_large(name: str, pixels: str) -> ImageTooLarge:
    """The policy's one error message."""
    return ImageTooLarge(f"{name} ({pixels} pixels) is over the limit of {MAX_PIXELS:,} pixels "
                         "(pipeline.data.images.MAX_PIXELS): refused, not decoded")


def open_image(source: bytes | str | Path, name: str = "") -> Image.Image:
    """The image opened lazily (header read, pixels not decoded yet), within the pixel limit.

    Raises ImageTooLarge over the limit, and Pillow's errors (OSError, ...) for what is not an
    image.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "image")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as err:  # Pillow's own check (same limit) came first
        found = re.search(r"\((\d+) pixels\)", str(err))  # "Image size (N pixels) exceeds ..."
        raise too_large(name, f"{int(found[1]):,}" if found else "too many") from None
    check_pixels(*image.size, name)
    return image


def load_rgb(path: str | Path) -> np.ndarray:
    """The image file as an upright (EXIF applied) RGB uint8 array, within the pixel limit."""
    with open_image(path) as image:
        return np.asarray(to_rgb(ImageOps.exif_transpose(image)))


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy; 16-bit and 32-bit grey levels are scaled to 8 bits (Pillow would clip)."""
    if image.mode in HIGH_BIT_MODES:
        levels = np.asarray(image, dtype=np.float64)
        scaled = levels / 257.0 if image.mode != "F" else levels  # 65535 -> 255
        image = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")
