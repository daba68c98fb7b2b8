"""Load tests and the benchmark harness of fmlite-platform.

``locustfile`` drives a running L0 with locust; ``bench`` (``fmlite bench``) starts the platform
on loopback, offers a fixed load to each configuration and reports predictions per CPU-second
and client-side latency. Nothing here is imported by a serving tier.
"""
