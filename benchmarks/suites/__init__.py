"""Benchmark suites: scripts that measure and print ratios, each run with ``python -m``.

    python -m edgeship.benchmarks.suites.reference    three models through every host backend
    python -m edgeship.benchmarks.suites.browser      onnxruntime-web against native onnxruntime
    python -m edgeship.benchmarks.suites.export       every export format's size, time and TVM's gain
    python -m edgeship.benchmarks.suites.compression  every compression pass's size and accuracy
    python -m edgeship.benchmarks.suites.stability    two ``bench`` sessions on one run, compared

Each takes ``--smoke``: its smallest setting (tests/test_suites.py runs every suite on it).
They stand apart from the harness they call (``edgeship/devices/host.py``, ``browser_bench.py``) and,
being on the benchmarks floor, call the stages and drivers directly, never the CLI.
"""
