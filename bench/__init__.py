"""Benchmarks of the haddock node against raw docker-py (not tests: they measure, they do not assert).

``python -m bench`` (or ``make bench``) runs them all; ``python -m bench e2e`` or
``python -m bench output`` runs one. Results go into ``bench/RESULTS.md``, replacing the
previous results of the benchmarks that ran. See ``bench/__main__.py`` for the options.

- :mod:`bench.e2e`: end-to-end latency of a no-op job through the node (in-process server, real
  gRPC client) vs the same engine calls made with docker-py, sequential and 20-way concurrent.
- :mod:`bench.output`: a job printing 1 GiB to stdout through a ``haddock serve`` process: the
  node's peak RSS, and wall time vs running an equivalent container and reading ``docker logs``.
"""
