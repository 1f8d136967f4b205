"""Host routes over rtnetlink: the binding's route at the LMA, the MN's route at the MAG."""

from __future__ import annotations

import os
import socket
import struct
import threading
from ipaddress import IPv6Address, IPv6Network

from lab import mcsock


class RouteError(RuntimeError):
    """A route change the kernel refused; the message reads like the ``ip`` command's."""


# rtnetlink (linux/netlink.h, linux/rtnetlink.h)
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")


class RouteTable:
    """The IPv6 main routing table of this process's namespace, changed over rtnetlink.

    ``replace`` and ``delete`` do what ``ip -6 route replace|del PREFIX [via GW] dev IF``
    do, without forking ``ip`` (about 2 ms a time here, which would show in every handover).
    Agents take any object with these two methods, so their logic can run against a fake.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self._lock = threading.Lock()  # one request and its ack at a time

    def replace(self, prefix: IPv6Network, dev: str, via: IPv6Address | None = None) -> None:
        """Install or overwrite the route to ``prefix``."""
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, prefix, dev, via)

    def delete(self, prefix: IPv6Network, dev: str, via: IPv6Address | None = None) -> None:
        """Remove the route to ``prefix``."""
        self._request(RTM_DELROUTE, 0, prefix, dev, via)

    def _request(
        self, kind: int, flags: int, prefix: IPv6Network, dev: str, via: IPv6Address | None
    ) -> None:
        words = f"{'replace' if kind == RTM_NEWROUTE else 'del'} {prefix}"
        words += f" via {via} dev {dev}" if via is not None else f" dev {dev}"
        try:
            ifidx = mcsock.ifindex(dev)
        except ValueError as exc:
            raise RouteError(f"ip -6 route {words}: {exc}") from None
        attrs = _rtattr(RTA_DST, prefix.network_address.packed)
        attrs += _rtattr(RTA_OIF, struct.pack("=I", ifidx))
        if via is not None:
            attrs += _rtattr(RTA_GATEWAY, via.packed)
        protocol = RTPROT_STATIC if kind == RTM_NEWROUTE else 0
        rtm = _RTMSG.pack(
            socket.AF_INET6, prefix.prefixlen, 0, 0, RT_TABLE_MAIN, protocol,
            RT_SCOPE_UNIVERSE, RTN_UNICAST, 0,
        )  # fmt: skip
        body = rtm + attrs
        with self._lock:
            self._seq += 1
            hdr = _NLMSGHDR.pack(
                _NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self._seq, 0
            )
            if self._sock is None:
                self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            self._sock.send(hdr + body)
            error = self._ack(self._seq)
        if error:
            raise RouteError(f"ip -6 route {words}: {os.strerror(error)}")

    def _ack(self, seq: int) -> int:
        """The errno the kernel acknowledged request ``seq`` with (0: done)."""
        assert self._sock is not None
        while True:
            data = self._sock.recv(65536)
            at = 0
            while at + _NLMSGHDR.size <= len(data):
                length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data, at)
                if kind == NLMSG_ERROR and got_seq == seq:
                    return -struct.unpack_from("=i", data, at + _NLMSGHDR.size)[0]
                at += max((length + 3) & ~3, _NLMSGHDR.size)


def _rtattr(kind: int, value: bytes) -> bytes:
    attr = struct.pack("=HH", 4 + len(value), kind) + value
    return attr + bytes(-len(attr) % 4)
