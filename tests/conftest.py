"""Fixtures shared by every test; they are defined in the `harness` package.

Processes: `start_process`. NATS: `nats_server`, `start_nats_server`. Triton: `tritonserver`,
`pytriton_server`, `triton_backend_directory`.
"""

from harness.nats import nats_server, start_nats_server
from harness.processes import start_process
from harness.triton import pytriton_server, triton_backend_directory, tritonserver

__all__ = [
    "nats_server",
    "pytriton_server",
    "start_nats_server",
    "start_process",
    "triton_backend_directory",
    "tritonserver",
]
