"""Serving devices: the open-loop load generator (``load``), a server started on the host
(``host``), and the ``serve/*.json`` sweep results with their knee (``results``)."""
