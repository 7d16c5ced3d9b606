"""Reading one image file for training, through edge_runtime's reader (the device reads the same).

Bombs and 32-bit or float images become one-line ``DataError``s; 16-bit greyscale is scaled to
0-255 rather than clipped (see ``edge_runtime.images``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime.images import GREY_MODES, ImageRefused, image_array
from edge_runtime.images import open_image as _open_image
from edgeship.core.errors import DataError

__all__ = ["GREY_MODES", "image_array", "open_image"]


def open_image(path: Path) -> Any:
    """``Image.open(path)`` (header only) with bombs and unsupported depths as DataError.

    An unreadable file still raises Pillow's ``UnidentifiedImageError``/``OSError``, which
    the folder loader counts and skips.
    """
    try:
        return _open_image(path)
    except ImageRefused as e:
        fix = " or remove it from the folder" if "decompression-bomb" in str(e) else ""
        raise DataError(f"{e}{fix}") from e
