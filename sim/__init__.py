"""Test and demo infrastructure for hyperbytedb-proxy (not shipped in the wheel).

- :mod:`sim.node`: a simulated HyperbyteDB node (ASGI app + ``python -m sim.node``).
- :mod:`sim.dns`: a small authoritative DNS server on loopback (dnspython).
- :mod:`sim.processes`: start/stop helpers for nodes, DNS and the proxy as real processes.
- :mod:`sim.cluster`: ``python -m sim.cluster``, the local demo (DNS + nodes + proxy).

Everything here binds to 127.0.0.0/8 only.
"""
