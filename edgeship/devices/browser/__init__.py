"""The browser as a device: headless Chromium and the demo page (``chromium``), the bundle
server with cross-origin isolation (``server``), and the measuring session (``session``)."""
