# -*- coding: utf-8 -*-
# Copyright: contributors to consistent.backup
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""One request and one answer over a Unix socket: a JSON object on one line each way.

This is a private module_utils file of consistent.backup: it is not part of the collection's
public API and may change without notice.

A detached service on the host (the PostgreSQL holder, _pg_holder) listens on a socket in a private directory; a
module, or the on-host guard (_guard's ``socket`` post), connects, sends one request line and reads one answer line.
Nothing here knows what a request means. The listener's process is known from the connected socket itself
(SO_PEERCRED), so a client can tell when the service it asked has ended without trusting a pid file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import struct
import typing as t

MAX_MESSAGE = 1 << 20
_UCRED = "3i"  # struct ucred: pid, uid, gid


class Unreachable(Exception):
    """Nobody listens on the socket (no socket file, or nobody accepts on it): the service is gone."""


def read_line(sock: socket.socket, limit: int = MAX_MESSAGE) -> bytes:
    """One message: bytes up to and including the newline (fewer when the peer closes first)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise ValueError("message longer than %d bytes" % limit)
    return data


def send(sock: socket.socket, message: t.Dict[str, t.Any]) -> None:
    """Send one message; a peer that left already is not an error (it learns nothing more anyway)."""
    with contextlib.suppress(OSError):
        sock.sendall((json.dumps(message) + "\n").encode("utf-8"))


def receive(sock: socket.socket) -> t.Dict[str, t.Any]:
    """The peer's one message, decoded; ValueError when it is not JSON."""
    return json.loads(read_line(sock).decode("utf-8"))


def peer_credentials(sock: socket.socket) -> t.Tuple[int, int, int]:
    """(pid, uid, gid) of the peer: for a client, the process that listens on the socket (it called listen())."""
    return struct.unpack(_UCRED, sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_UCRED)))


def request(socket_path: str, message: t.Dict[str, t.Any], timeout: float,
            peer: t.Optional[t.Dict[str, int]] = None) -> t.Dict[str, t.Any]:
    """Send ``message`` to the service on ``socket_path`` and return its answer.

    Raises Unreachable when nobody listens there or the service closed without answering, ``socket.timeout`` when it
    accepted but did not answer within ``timeout`` (it may be busy), OSError or ValueError otherwise. ``peer``, when
    given, receives the listener's ``pid`` and ``uid`` as soon as the connection is made (also when no answer comes).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(socket_path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise Unreachable(str(exc))
            raise
        if peer is not None:
            peer["pid"], peer["uid"], _gid = peer_credentials(sock)
        sock.sendall((json.dumps(message) + "\n").encode("utf-8"))
        data = read_line(sock)
    finally:
        sock.close()
    if not data:
        raise Unreachable("the service on %s closed the connection without an answer" % socket_path)
    return json.loads(data.decode("utf-8"))
