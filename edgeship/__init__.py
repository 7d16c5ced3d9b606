"""edgeship: take a small model from training to a Raspberry Pi and a browser, and measure it."""

__version__ = "0.1.0"
