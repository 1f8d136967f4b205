"""Host side of the proxy: upstream memberships held by the kernel's own IGMP/MLD host stack.

Like mcproxy, the proxy does not craft reports on its upstream interfaces. It sets the
socket source filter of each (interface, group) with ``MCAST_MSFILTER`` and the kernel
sends the RFC 3376 §5.1 / RFC 3810 §6.1 state-change reports, answers queries, and
follows older-version queriers (H1, H2) on its own.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from dataclasses import dataclass, field

from proxy.kernel import KernelError, ifindex
from proxy.membership import MembershipState
from proxy.messages import Address, FilterMode

MCAST_JOIN_GROUP = 42
MCAST_BLOCK_SOURCE = 43
MCAST_UNBLOCK_SOURCE = 44
MCAST_LEAVE_GROUP = 45
MCAST_JOIN_SOURCE_GROUP = 46
MCAST_LEAVE_SOURCE_GROUP = 47
MCAST_MSFILTER = 48
_SS_SIZE = 128  # sizeof(struct sockaddr_storage)
# struct sockaddr_storage is aligned like a pointer, so in the RFC 3678 structs the u32
# interface index is followed by padding on 64-bit (4 bytes) and by none on 32-bit.
_SS_ALIGN = ctypes.alignment(ctypes.c_void_p)
_IFINDEX_FIELD = -(-4 // _SS_ALIGN) * _SS_ALIGN


def sockaddr_storage(addr: Address) -> bytes:
    """A struct sockaddr_storage holding ``addr`` with port 0."""
    if addr.version == 6:
        raw = struct.pack("=HHI16sI", socket.AF_INET6, 0, 0, addr.packed, 0)
    else:
        raw = struct.pack("=HH4s8x", socket.AF_INET, 0, addr.packed)
    return raw.ljust(_SS_SIZE, b"\0")


def _ifindex_field(ifidx: int) -> bytes:
    return struct.pack("=I", ifidx).ljust(_IFINDEX_FIELD, b"\0")


def group_req(ifidx: int, group: Address) -> bytes:
    """struct group_req (RFC 3678): interface index and group."""
    return _ifindex_field(ifidx) + sockaddr_storage(group)


def group_source_req(ifidx: int, group: Address, source: Address) -> bytes:
    """struct group_source_req (RFC 3678): interface index, group and source."""
    return group_req(ifidx, group) + sockaddr_storage(source)


def group_filter(ifidx: int, group: Address, state: MembershipState) -> bytes:
    """struct group_filter for MCAST_MSFILTER (the full-state RFC 3678 API)."""
    mode = 1 if state.mode is FilterMode.INCLUDE else 0  # MCAST_INCLUDE=1, MCAST_EXCLUDE=0
    sources = sorted(state.sources, key=int)
    head = (
        struct.pack("=I4x", ifidx)
        + sockaddr_storage(group)
        + struct.pack("=II", mode, len(sources))
    )
    body = b"".join(sockaddr_storage(s) for s in sources)
    # GROUP_FILTER_SIZE(0) still counts one sockaddr_storage slot.
    return head + (body or bytes(_SS_SIZE))


@dataclass
class _Membership:
    sock: socket.socket
    state: MembershipState


@dataclass
class HostMemberships:
    """Upstream memberships of one proxy instance, for one address family."""

    family: int
    _socks: list[socket.socket] = field(default_factory=list)
    _members: dict[tuple[str, Address], _Membership] = field(default_factory=dict)

    @property
    def _level(self) -> int:
        return socket.IPPROTO_IPV6 if self.family == 6 else socket.IPPROTO_IP

    def _new_socket(self) -> socket.socket:
        af = socket.AF_INET6 if self.family == 6 else socket.AF_INET
        sock = socket.socket(af, socket.SOCK_DGRAM)
        self._socks.append(sock)
        return sock

    def state(self, ifname: str, group: Address) -> MembershipState | None:
        m = self._members.get((ifname, group))
        return m.state if m else None

    def memberships(self) -> dict[tuple[str, Address], MembershipState]:
        return {k: m.state for k, m in self._members.items()}

    def set(self, ifname: str, group: Address, state: MembershipState) -> bool:
        """Make the kernel hold ``state`` for ``group`` on ``ifname``; True if it changed."""
        key = (ifname, group)
        current = self._members.get(key)
        no_interest = state.mode is FilterMode.INCLUDE and not state.sources
        if current and current.state == state:
            return False
        idx = ifindex(ifname)
        if no_interest:
            if current:
                self._members.pop(key)
                if idx:
                    try:
                        current.sock.setsockopt(
                            self._level, MCAST_LEAVE_GROUP, group_req(idx, group)
                        )
                    except OSError:
                        pass  # the kernel dropped it with the interface
            return current is not None
        if not idx:
            return False  # interface absent: nothing to hold, retried on link up
        if current is None:
            sock = self._join(idx, group, state)
            current = self._members[key] = _Membership(sock, state)
        try:
            current.sock.setsockopt(self._level, MCAST_MSFILTER, group_filter(idx, group, state))
        except OSError as exc:
            raise KernelError(f"MCAST_MSFILTER {group} on {ifname}: {exc.strerror}") from exc
        current.state = state
        return True

    def _join(self, idx: int, group: Address, state: MembershipState) -> socket.socket:
        # Joining INCLUDE(A) starts from one source so that no transient EXCLUDE{} (an ASM
        # join) is ever reported for an SSM channel.
        if state.mode is FilterMode.INCLUDE:
            opt, req = (
                MCAST_JOIN_SOURCE_GROUP,
                group_source_req(idx, group, min(state.sources, key=int)),
            )
        else:
            opt, req = MCAST_JOIN_GROUP, group_req(idx, group)
        if self._socks:
            try:
                self._socks[-1].setsockopt(self._level, opt, req)
                return self._socks[-1]
            except OSError as exc:
                # Per-socket membership limits (igmp_max_memberships): use another socket.
                if exc.errno not in (errno.ENOBUFS, errno.ENOMEM):
                    raise KernelError(f"joining {group}: {exc.strerror}") from exc
        sock = self._new_socket()
        try:
            sock.setsockopt(self._level, opt, req)
        except OSError as exc:
            raise KernelError(f"joining {group}: {exc.strerror}") from exc
        return sock

    def forget_interface(self, ifname: str) -> None:
        """Drop bookkeeping for an interface that went away (the kernel dropped its joins)."""
        for key in [k for k in self._members if k[0] == ifname]:
            self._members.pop(key)

    def close(self) -> None:
        """Leave every group: closing a socket makes the kernel leave all of its memberships
        at once (and report the leaves), far faster than one setsockopt per group."""
        for sock in self._socks:
            sock.close()
        self._socks.clear()
        self._members.clear()
