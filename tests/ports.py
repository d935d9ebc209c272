"""Free loopback ports for the processes a test starts.

A port is free when asked, not when the process binds it: two calls in a row can get the
same port from the kernel before either is bound (CI saw the orchestrator and the gateway
handed the same one). Every port handed out is remembered for the whole test session and
never handed out twice.
"""

from __future__ import annotations

import socket

_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before in this session."""
    for _ in range(1000):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise OSError("no fresh loopback port")
