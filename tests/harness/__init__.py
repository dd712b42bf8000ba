"""Reusable test harness: real processes (nats-server, tritonserver, PyTriton, web servers).

Fixtures live in `harness.processes`, `harness.nats` and `harness.triton` and are re-exported by
`tests/conftest.py`; helpers (`free_port`, `ManagedProcess`, `http_request`) are imported directly.
"""
