"""Watching a deployed model: request logs against the run's reference, in windows, with a verdict.

``reference`` (what the run says the data looked like), ``drift`` (the statistics), ``windows``
(by count or time, split by model version) and ``monitor`` (``edgeship monitor``: read a log
folder, judge each window, write ``monitor/*.json`` into the run).
"""
