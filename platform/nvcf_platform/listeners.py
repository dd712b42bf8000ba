"""The platform's listening sockets and the addresses that name them: a bound or inherited HTTP
socket, and hosts written as URLs and gRPC addresses write them."""

from __future__ import annotations

import socket

from nvcf_platform.errors import PlatformError

__all__ = ["bind_listener", "bracketed", "inherited_listener", "url_host"]


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0 = a free port), address reuse on."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as error:
        raise PlatformError(f"cannot listen on {host}:{port}: {error}") from None


def inherited_listener(fd: int) -> socket.socket:
    """The listening socket a supervisor handed down (closing it here leaves the supervisor's)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise PlatformError(f"cannot use the inherited socket (fd {fd}): {error}") from None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_ACCEPTCONN
    ):
        sock.detach()
        raise PlatformError(f"fd {fd} is not a listening TCP socket")
    sock.setblocking(False)
    return sock


def bracketed(host: str) -> str:
    """An IPv6 literal in brackets, as URLs and gRPC addresses write it."""
    return f"[{host}]" if ":" in host else host


def url_host(host: str) -> str:
    """`host` as a URL that reaches it names it; wildcard addresses become loopback."""
    if host in {"", "0.0.0.0"}:
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return bracketed(host)
