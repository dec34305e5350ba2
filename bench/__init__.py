"""Benchmarks of the haddock node (not tests: they measure, they do not assert).

``python -m bench`` (or ``make bench``) runs them all; ``python -m bench e2e`` or
``python -m bench output`` runs one. Results go into ``bench/RESULTS.md``, replacing the
previous results of the benchmarks that ran, each figure with its goal and verdict (issue 9's
"Done means"). See ``bench/__main__.py`` for the options.

- :mod:`bench.e2e`: end-to-end latency of a no-op job through the node (in-process server, real
  gRPC client) vs the same engine calls made with docker-py, sequential and 20-way concurrent.
- :mod:`bench.output` (report in :mod:`bench.output_report`): 512 MiB of short lines, and the same
  bytes as a few large lines, through a ``haddock serve`` process vs the floor (the docker CLI,
  attached, ``--log-driver none``), and the peak RSS of the node's processes.
- :mod:`bench.common` (machine, statistics, /proc readers, RESULTS.md), :mod:`bench.nodeproc` (the
  node as a process and the processes it starts), :mod:`bench.raw` (docker-py and CLI baselines),
  :mod:`bench.profiling` (py-spy).
"""
