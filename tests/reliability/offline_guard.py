"""Refuse every non-loopback connection and name lookup in this process (see ``offline/sitecustomize.py``)."""

from __future__ import annotations

import errno
import ipaddress
import socket

MESSAGE = "network disabled by the reliability tests"
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _is_loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    host = str(host).split("%")[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip_literal(host) -> bool:
    try:
        ipaddress.ip_address((host.decode() if isinstance(host, bytes) else str(host)).split("%")[0])
        return True
    except ValueError:
        return False


def _allowed(sock, address) -> bool:
    if getattr(socket, "AF_UNIX", None) is not None and sock.family == socket.AF_UNIX:
        return True
    host = address[0] if isinstance(address, tuple) else address
    return _is_loopback(host)


def install() -> None:
    """Idempotent. Patches ``socket.socket.connect``/``connect_ex`` and ``socket.getaddrinfo``."""
    if getattr(socket.socket.connect, "_replicate_offline", False):
        return
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guarded_connect(self, address):
        if not _allowed(self, address):
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{MESSAGE}: {address!r}")
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if not _allowed(self, address):
            return errno.ECONNREFUSED
        return connect_ex(self, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host) and not _is_ip_literal(host):  # a literal needs no DNS
            raise socket.gaierror(socket.EAI_NONAME, f"{MESSAGE}: lookup of {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    guarded_connect._replicate_offline = True
    guarded_connect._original = (connect, connect_ex, getaddrinfo)
    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = (
        guarded_connect, guarded_connect_ex, guarded_getaddrinfo)


def uninstall() -> None:
    original = getattr(socket.socket.connect, "_original", None)
    if original is not None:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = original
