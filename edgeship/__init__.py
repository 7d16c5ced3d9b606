"""edgeship: take a small model from training to a Raspberry Pi and a browser, and measure it.

The stages live in the design's top-level folders (``training/``, ``compression/``,
``export/``, ``benchmarks/``) and are installed as subpackages of this one
(``edgeship.training`` ...) through pyproject's ``package-dir``, so edgeship claims no generic
top-level name such as ``export`` and every file keeps one path.
"""

from edgeship.core import __version__

__all__ = ["__version__"]
