"""edgeship: take a small model from training to a Raspberry Pi and a browser, and measure it.

The stages live in the design's top-level folders (``training/``, ``compression/``,
``export/``, ``benchmarks/``) and are installed as subpackages of this one
(``edgeship.training`` ...), so edgeship claims no generic top-level name such as ``export``;
in the checkout, ``edgeship/<stage>`` is a symbolic link to the folder.
"""

from edgeship.core import __version__

__all__ = ["__version__"]
