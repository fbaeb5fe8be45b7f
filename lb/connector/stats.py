"""What a running connector has seen, for tests and demos to assert on.

A test that points the load balancer at a connector wants to know *that* requests
arrived, which rule served them and which SNI the client sent (the LB must send the
tunnel's public hostname, docs/connector.md).  The server only appends to these
structures; readers look at them between requests.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["ConnectorStats", "RequestRecord", "is_probe"]

PROBE_AGENTS = ("(health-check;", "Cloudflare-Traffic-Manager/")
"""What a monitor's User-Agent contains: tunnel-lb's own, or Cloudflare's (monitors/spec.py)."""


def is_probe(user_agent: str) -> bool:
    """Whether a request with this User-Agent is a health monitor's probe."""
    return any(mark in user_agent for mark in PROBE_AGENTS)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One answered request."""

    method: str
    host: str
    target: str
    rule: int
    """Index of the ingress rule that served it (-1: rejected before routing, e.g. 400)."""
    status: int
    sni: str | None
    tls: bool


@dataclass(slots=True)
class ConnectorStats:
    """Counters and a bounded log of recent requests; pass one to ``serve_connector``."""

    keep: int = 1000
    """How many recent :class:`RequestRecord` entries ``recent`` retains."""
    listening: list[str] = field(default_factory=list)
    """URLs of the bound listeners, e.g. ``https://127.0.0.1:18443`` (filled at start)."""
    connections: int = 0
    requests: int = 0
    probes: int = 0
    """Requests that came with a monitor's User-Agent (counted on arrival, answered or not:
    ``tunnel-lb rehearse`` compares them with the simulator's probe attempts)."""
    by_rule: Counter[int] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    sni: list[str | None] = field(default_factory=list)
    """The server name each TLS client sent, one entry per handshake (the last ``keep``)."""
    recent: list[RequestRecord] = field(default_factory=list)
    sessions: int = 0
    """TCP-service streams accepted (WebSocket upgrades answered 101)."""
    sessions_open: int = 0
    """TCP-service streams being carried right now."""

    def record(self, entry: RequestRecord) -> None:
        """Count one answered request and keep it in ``recent``."""
        self.requests += 1
        self.by_rule[entry.rule] += 1
        self.by_status[entry.status] += 1
        self.recent.append(entry)
        if len(self.recent) > self.keep:
            del self.recent[: len(self.recent) - self.keep]

    def note_request(self, user_agent: str) -> None:
        """Note one request head as it arrives (before any fault decides its fate)."""
        if is_probe(user_agent):
            self.probes += 1

    def record_sni(self, server_name: str | None) -> None:
        """Note the server name of one completed TLS handshake."""
        self.sni.append(server_name)
        if len(self.sni) > self.keep:
            del self.sni[: len(self.sni) - self.keep]
