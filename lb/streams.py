"""Whether an idle connection's socket has something to read, for the two keep-alive pools.

The proxy's upstream pool (:mod:`lb.proxy.upstream`) and the rehearsal's client
(:mod:`lb.rehearse.client`) both check an idle connection once as they take it: an idle
HTTP/1.1 connection has nothing to say, so a readable socket means EOF, a reset, a TLS
close_notify or unsolicited bytes, and the connection is not reused.  One copy, so the two
cannot drift apart.
"""

from __future__ import annotations

import select

import trio

__all__ = ["readable"]


def readable(stream: trio.abc.Stream) -> bool:
    """Whether the idle ``stream``'s socket has something to read: EOF, reset or stray bytes.

    One zero-timeout ``poll`` on the raw socket (under TLS too: a close_notify or the FIN shows
    there; an SSLStream keeps no decrypted bytes between exchanges once the parser saw the
    response end; bytes the HTTP parser buffered are the caller's to check).  A socket that
    cannot be polled counts as readable, i.e. unusable; a stream with no socket (a test
    double) as not readable.
    """
    inner: object = stream
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    if not isinstance(inner, trio.SocketStream):
        return False  # test doubles (memory streams): nothing to poll
    try:
        fd = inner.socket.fileno()
        if fd < 0:
            return True
        if _HAS_POLL:  # poll, unlike select, has no FD_SETSIZE (1024) limit
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        ready, _, _ = select.select([fd], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


_HAS_POLL = hasattr(select, "poll")
