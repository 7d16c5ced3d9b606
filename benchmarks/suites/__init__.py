"""Benchmark suites: scripts that measure and print ratios, each run with ``python -m``.

    python -m edgeship.benchmarks.suites.reference    three models through every host backend
    python -m edgeship.benchmarks.suites.browser      onnxruntime-web and LiteRT.js against native runtimes
    python -m edgeship.benchmarks.suites.browser_profile  where a browser runtime's time goes
    python -m edgeship.benchmarks.suites.export       every export format's size, time and TVM's gain
    python -m edgeship.benchmarks.suites.compression  every compression pass's size and accuracy
    python -m edgeship.benchmarks.suites.stability    two ``bench`` sessions on one run, compared
    python -m edgeship.benchmarks.suites.coldstart    edge_runtime's overhead and cold start over bare LiteRT
    python -m edgeship.benchmarks.suites.fleet        a second device through TVM's RPC tracker
    python -m edgeship.benchmarks.suites.serving      the server's overhead, capacity, zero-drop update
    python -m edgeship.benchmarks.suites.drift        false drift alarms, and delay on a shift
    python -m edgeship.benchmarks.suites.real_models  an image-folder MobileNetV2; stock models

Each takes ``--smoke``: its smallest setting (tests/test_suites.py runs every suite on it).
They stand apart from the harness they call (``edgeship/devices/host.py``, ``browser_bench.py``) and,
being on the benchmarks floor, call the stages and drivers directly, never the CLI.
"""
