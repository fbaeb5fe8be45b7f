"""Long-lived connections (SSH, RDP, any TCP over WebSocket) in the simulator.

A request is decided and answered within a tick; a session of a private TCP service is
decided once (its WebSocket upgrade is a request like any other: steering, affinity is not
kept, the one zero-downtime retry when the connect fails) and then *stays on the endpoint and
replica that accepted it* until it ends or that path fails.  Nothing moves a live session:
health changes, a disabled endpoint or a re-weighted pool only steer new sessions, and no
retry can happen mid-stream, as with a real tunnel.  So a scenario can count how many open
sessions a failover drops, which request metrics hide (a retried request looks fine).

A session is dropped at the first network change (:meth:`Network.next_change`) after which
its replica no longer answers (an edge fault on that replica, or an answer >= 500 through it:
the origin behind the tunnel is down).  It completes after its ``duration``.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from random import Random

from lb.engine import Engine
from lb.sim.network import Network
from lb.sim.scenario import Traffic
from lb.sim.traffic import WALL_EPOCH
from steering import Request

__all__ = ["DatacenterSessions", "SessionTotals"]


@dataclass(slots=True)
class SessionTotals:
    """What the sessions of one run did (summed over data centers for the report)."""

    opened: int = 0
    completed: int = 0
    refused: int = 0
    """Upgrades that got no session: no pool (530), or a failed answer after any retry."""
    retried: int = 0
    """Sessions opened on a second endpoint after the first connect failed (R42)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Sessions cut by a failure, by the endpoint key they were on."""
    open_at_end: int = 0

    def add(self, other: SessionTotals) -> None:
        """Fold ``other`` into these totals."""
        self.opened += other.opened
        self.completed += other.completed
        self.refused += other.refused
        self.retried += other.retried
        self.open_at_end += other.open_at_end
        for key, n in other.dropped.items():
            self.dropped[key] = self.dropped.get(key, 0) + n

    def as_json(self) -> dict[str, object]:
        """The report's ``long_sessions`` object (``docs/simulate.md``)."""
        return {
            "opened": self.opened,
            "completed": self.completed,
            "dropped": sum(self.dropped.values()),
            "dropped_by_endpoint": dict(sorted(self.dropped.items())),
            "refused": self.refused,
            "retried": self.retried,
            "open_at_end": self.open_at_end,
        }


@dataclass(slots=True)
class _Session:
    key: str
    address: str
    replica: str | None
    host: str


class DatacenterSessions:
    """The long-lived connections entering at one data center."""

    def __init__(self, traffic: Traffic, index: int, seed: int, network: Network) -> None:
        self.traffic = traffic
        self.dc = traffic.datacenter
        self.totals = SessionTotals()
        self._network = network
        self._rng = Random(f"{seed}:sessions:{traffic.datacenter}")
        self._index = index
        self._due = 0
        self._seq = 0
        self._open: list[tuple[float, int, _Session]] = []
        self._recheck_at = -math.inf

    def tick(self, t: float, length: float, now: float, engine: Engine) -> None:
        """End, drop and open the sessions of the tick ``[t, t + length)``."""
        self._end(t)
        if t >= self._recheck_at:
            self._drop_failed(t)
            self._recheck_at = self._network.next_change(t)
        due = math.floor(self.traffic.sessions_rate * (t + length) + 1e-6)
        for _ in range(due - self._due):
            self._start(t, now, engine)
        self._due = due

    def finish(self) -> SessionTotals:
        """The totals, with the sessions still open at the end of the run."""
        self.totals.open_at_end = len(self._open)
        return self.totals

    def _end(self, t: float) -> None:
        heap = self._open
        while heap and heap[0][0] <= t + 1e-9:
            heapq.heappop(heap)
            self.totals.completed += 1

    def _alive(self, s: _Session, t: float) -> bool:
        answer = self._network.replica_answer(
            s.address, s.replica, self.dc, s.host, self.traffic.path, t
        )
        return answer is not None and answer.status < 500

    def _drop_failed(self, t: float) -> None:
        kept = []
        for item in self._open:
            if self._alive(item[2], t):
                kept.append(item)
            else:
                key = item[2].key
                self.totals.dropped[key] = self.totals.dropped.get(key, 0) + 1
        if len(kept) != len(self._open):
            heapq.heapify(kept)
            self._open = kept

    def _start(self, t: float, now: float, engine: Engine) -> None:
        self._seq += 1
        c = self._seq
        req = Request(
            host=self.traffic.host,
            client_ip=f"172.{16 + (self._index % 16)}.{(c >> 8) & 255}.{c & 255}",
            datacenter=self.dc,
            uri=self.traffic.path,
            now=now,
            wall=WALL_EPOCH + t,
        )
        d = engine.decide(req, self._rng)
        if d.endpoint is None:
            self.totals.refused += 1
            return
        ep = d.endpoint
        host = ep.host or self.traffic.host
        address = ep.address.lower().rstrip(".")
        path = self.traffic.path
        answers = self._network.answers(address, (self.dc,), self.dc, host, path, t, user=True)
        a = answers[int(self._rng.random() * len(answers))]
        if a.connect_failed:
            retry = engine.retry(d, req, self._rng, status=a.status)
            if retry is not None and retry.endpoint is not None:
                ep = retry.endpoint
                host = ep.host or self.traffic.host
                address = ep.address.lower().rstrip(".")
                answers = self._network.answers(
                    address, (self.dc,), self.dc, host, path, t, user=True
                )
                a = answers[int(self._rng.random() * len(answers))]
                self.totals.retried += 1
        if a.status >= 500 or a.connect_failed:
            self.totals.refused += 1
            return
        self.totals.opened += 1
        session = _Session(ep.key, address, a.replica, host)
        end = t + self.traffic.session_duration
        heapq.heappush(self._open, (end, self._seq, session))
