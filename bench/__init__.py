"""``python -m bench``: the proxy against nginx and the bare backend, on loopback.

The benchmark is a command, not a test: it starts every target side by side
on 127.0.0.0/8, drives each with wrk (one thread, a machine of two cores),
and prints one table plus ``.bench/results.json``.  Targets from the
project's performance issue are computed and marked, never asserted.
"""
