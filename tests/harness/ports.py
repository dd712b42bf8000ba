"""Free loopback TCP ports for servers a test starts.

A port is only reserved while its socket is open, so pick ports just before starting the server.
They are picked outside the kernel's ephemeral range, which outgoing connections draw from.
"""

from __future__ import annotations

from nvcf_platform.devstack.stack_spec import free_port as stack_free_port

__all__ = ["LOOPBACK", "free_port", "free_ports"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Return `count` distinct free TCP ports on 127.0.0.1, outside the kernel's ephemeral range
    where it can be (`stack_spec.free_port`: no outgoing connection can take one meanwhile)."""
    ports: list[int] = []
    for _ in range(count):
        ports.append(stack_free_port(avoid=ports))
    return ports
