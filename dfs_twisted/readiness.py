"""Telling a service manager that the node is ready, or stopping (systemd's sd_notify).

With ``Type=notify`` systemd sets ``$NOTIFY_SOCKET`` and waits for ``READY=1``
before it counts the service as started: for a node, once its ports listen.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``) to $NOTIFY_SOCKET; False if none."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    # A leading "@" names a socket in the abstract namespace.
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), address)
    except OSError:
        return False
    return True
