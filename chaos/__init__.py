"""The fault suite: proves that a database restart is invisible to the proxy's clients.

``python -m chaos`` starts the proxy as a user would (``python -m app``), three
simulated HyperbyteDB nodes on 127.0.0.2-4 (same port, like pods), the loopback
DNS server standing in for the headless Service, drives steady mixed load
through the proxy and injects one fault per scenario (rolling restart, crash,
hang, short and long full outages, pod replacement, proxy SIGTERM, and a crash
in front of real InfluxDB 1.x servers).  Each scenario asserts its promised
outcome and prints one row of a table.

- :mod:`chaos.harness`: the cluster (DNS, nodes, proxy) and the proxy's access log.
- :mod:`chaos.load`: the asyncio clients and what they saw.
- :mod:`chaos.report`: scenario results, checks and the table.
- :mod:`chaos.scenarios`: scenarios 1-7 (simulated nodes).
- :mod:`chaos.influx`: scenario 8 (real ``influxd`` servers).

Everything binds to and talks to 127.0.0.0/8 only; every process started is
stopped, every loop is bounded in count and time.
"""
