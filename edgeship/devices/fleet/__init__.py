"""A fleet of devices through Apache TVM's RPC tracker: never a scheduler of our own.

``edgeship fleet`` starts TVM's tracker (``python -m tvm.exec.rpc_tracker``) on this machine and
joins devices to it: each device runs ``python -m edge_runtime.rpc_server`` from its runtime
venv, TVM's RPC server with edgeship's bench session registered in it, under a device key
(``rpi4``, ``host``). The tracker hands free devices of a key to whoever asks:

- ``bench``: ``edgeship bench RUN --on fleet --key K`` measures every matching artifact on every
  free device of ``K`` at once, one ``edge_runtime`` bench session per device (same method and
  schema as every device), one result per device id;
- ``export --tracker H:P --key K``: MetaSchedule's ``RPCRunner`` measures tuning candidates there.

The modules: ``state`` (what this machine started: pid files), ``tracker`` (start, stop,
status, the queue), ``runtime`` (the device venv, with the deploy's steps), ``join`` (start and
stop device servers), ``bench`` (the ``--on fleet`` driver).
"""
