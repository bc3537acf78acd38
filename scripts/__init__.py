"""Parley's command-line tools, each run as a module from the repository root:
``python -m scripts.loadtest``, ``python -m scripts.bench``, ``python -m scripts.stack up``...

Their shared code is the ``tools`` package; ``make`` targets wrap the common invocations.
"""
