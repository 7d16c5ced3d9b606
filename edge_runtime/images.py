"""Reading one image file, the same way in training and on the device.

Training (``edgeship.training.images``) and ``python -m edge_runtime predict`` both read images
through here, so a model sees on the device exactly the arithmetic it was trained on. Three
things would otherwise go wrong quietly or loudly:

- a decompression bomb (a small file that expands to gigapixels): Pillow warns above
  ``Image.MAX_IMAGE_PIXELS`` and raises above twice that; both are refused, naming the file;
- 16-bit greyscale (``I;16*``, what Pillow makes of 16-bit PNG and TIFF): ``convert("L")``
  clips every value above 255 to white; it is scaled to 0-255 instead (``v * 255 / 65535``)
  and resized in floating point;
- 32-bit integer or float images (``I``, ``F``): no fixed range to scale from, so refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N"})
SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


class ImageRefused(ValueError):
    """An image edgeship will not read; the message names the file, why, and the fix."""


def open_image(path: Path) -> Any:
    """``Image.open(path)`` (header only), refusing bombs and unsupported depths.

    An unreadable file still raises Pillow's ``UnidentifiedImageError``/``OSError``.
    """
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise ImageRefused(
                f"refusing {path}: it expands to more than {Image.MAX_IMAGE_PIXELS:,} pixels "
                f"(Pillow's decompression-bomb limit; {str(e).split(',')[0]}): shrink it"
            ) from e
    if im.mode == "I" and im.format == "PNG":  # older Pillow: 16-bit PNG as 32-bit "I"
        return im
    if im.mode in ("I", "F") or im.mode.startswith(("I;32", "F;")):
        im.close()
        kind = "float" if im.mode.startswith("F") else "32-bit integer"
        raise ImageRefused(
            f"{path} is a {kind} image (mode {im.mode}): edgeship reads 8-bit and 16-bit images; "
            "save it as an 8- or 16-bit PNG"
        )
    return im


def image_u8(im: Any, mode: str, size: tuple[int, int]) -> np.ndarray | None:
    """An 8-bit image as uint8 (H, W[, C]) in ``mode`` at ``size``, as ``image_array`` makes it
    before its float cast; None for a 16- or 32-bit one (those take ``image_array``'s float path)."""
    from PIL import Image

    if im.mode in SIXTEEN_BIT or im.mode == "I":
        return None
    if im.mode != mode:
        im = im.convert(mode)
    if im.size != size:
        im = im.resize(size, Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def image_array(im: Any, mode: str, size: tuple[int, int]) -> np.ndarray:
    """``im`` as float32 intensities in 0-255, ``mode`` ``L`` or ``RGB``, resized to ``size`` (w, h)."""
    from PIL import Image

    if im.mode in SIXTEEN_BIT or im.mode == "I":
        scaled = np.asarray(im, dtype=np.float32) * np.float32(255.0 / 65535.0)
        if mode == "L":
            return np.asarray(Image.fromarray(scaled).resize(size, Image.BILINEAR), np.float32)
        im = Image.fromarray(np.rint(scaled).astype(np.uint8))
    return np.asarray(im.convert(mode).resize(size, Image.BILINEAR), dtype=np.float32)
