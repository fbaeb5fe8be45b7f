"""What to probe: a :class:`Probe` per probe identity, and :class:`Job` s that fan results out.

A :class:`Probe` holds everything that changes what goes on the wire or how the answer is
judged, resolved from the configuration once, so the drivers never look at the configuration:

* **Host (R5)**: endpoint ``header.Host`` > monitor ``header.Host`` > endpoint ``address``.
* **SNI (R4)**: the effective Host, without a port; none when that Host is an IP literal
  (TLS forbids IP addresses in SNI; the certificate is then checked against the IP), and
  none for http and tcp probes, which have no TLS.
* **Port (R7, open question 17)**: monitor ``port`` when non-zero, else the endpoint ``port``
  when non-zero, else 443 for https and 80 for http.  The endpoint port is where traffic goes,
  so a monitor that does not name a port probes that.  Cloudflare's docs leave this open.
* **Dial address**: ``connect_to["address:port"]`` when present, else ``address:port``, the
  address normalised as the proxy does it (:func:`lb.config.hosts.dial_address`: lowercase,
  no trailing dot).  Only the socket address changes: Host and SNI stay what R4/R5 say, like
  ``curl --connect-to``.
* **Headers**: the monitor's headers except ``Host`` (placed by R5) and ``User-Agent``
  (R6: never overridable).  The User-Agent is ours (``tunnel-lb/<version> (health-check;
  pool: <pools>)``) or, with ``engine.probe_user_agent: cloudflare``, Cloudflare's.

:func:`plan` deduplicates: targets whose probes are equal (User-Agent aside) and that run from
the same vantage point become one :class:`Job` probed once, whose result is reported to every
(pool, endpoint) in :attr:`Job.fanout`.  A shared probe's User-Agent names all its pools
(``pool: a,b``), or in Cloudflare mode the first pool's id in configuration order.

Monitor groups (R16): a pool with a group has one target per enabled member, and each
member's probe is planned like any other, so members that differ on the wire are probed
separately.  :attr:`Job.routes` keeps the member of every (pool, endpoint) a job reports to;
identical member probes share a job whose result reaches each member.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from lb import __version__
from lb.config.hosts import dial_address
from lb.config.model import Config
from lb.core.book import ProbeTarget

__all__ = ["Job", "Probe", "jobs_for_config", "plan", "probe_for", "user_agent"]

CLOUDFLARE_UA = (
    "Mozilla/5.0 (compatible; Cloudflare-Traffic-Manager/1.0; "
    "+https://www.cloudflare.com/traffic-manager/; pool-id: {pool_id})"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """One probe identity, fully resolved (see the module docstring)."""

    scheme: str
    """``http``, ``https`` or ``tcp``."""
    address: str
    port: int
    dial_host: str
    dial_port: int
    host: str
    sni: str | None
    path: str = "/"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    user_agent: str = ""
    expected_codes: str = "200"
    expected_body: str = ""
    follow_redirects: bool = False
    allow_insecure: bool = False
    timeout: float = 5.0
    retries: int = 2
    interval: float = 60.0

    @property
    def url(self) -> str:
        """The URL this probe asks for, as a human reads it (Host, not the dial address)."""
        if self.scheme == "tcp":
            return f"tcp://{self.host}:{self.port}"
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One probe from one vantage point, and the (pool, endpoint) pairs its results go to."""

    probe: Probe
    vantage: str
    fanout: tuple[tuple[str, str], ...]
    routes: tuple[tuple[str, str, str], ...] = ()
    """``(pool, endpoint, member)`` for every result to report, ``member`` empty without a
    monitor group; empty means one result per :attr:`fanout` entry."""

    @property
    def deliveries(self) -> tuple[tuple[str, str, str], ...]:
        """Where each result of this job goes: ``(pool, endpoint, member)``."""
        return self.routes or tuple((p, e, "") for p, e in self.fanout)


def user_agent(mode: str, pools: Sequence[str], pool_ids: Sequence[str]) -> str:
    """The probe User-Agent (R6) for a probe shared by ``pools`` (configuration order)."""
    if mode == "cloudflare":
        return CLOUDFLARE_UA.format(pool_id=(pool_ids[0] if pool_ids else "")[:16])
    return f"tunnel-lb/{__version__} (health-check; pool: {','.join(pools)})"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.index("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def probe_for(target: ProbeTarget, *, connect_to: Mapping[str, str] | None = None) -> Probe:
    """The probe of one target, User-Agent left empty (set by :func:`plan`)."""
    m, o = target.monitor, target.origin
    port = m.port or o.port or (443 if m.type == "https" else 80)
    host = o.host_header or m.host_header or o.address
    server_name = _strip_port(host)
    dial_host, dial_port = dial_address(o.address, port, connect_to or {})
    headers = tuple(
        (name, value)
        for name, values in m.header.items()
        if name.lower() not in ("host", "user-agent")
        for value in values
    )
    return Probe(
        scheme=m.type,
        address=o.address,
        port=port,
        dial_host=dial_host,
        dial_port=dial_port,
        host=host,
        sni=None if m.type != "https" or _is_ip(server_name) else server_name,
        path=m.path or "/",
        method=m.effective_method,
        headers=headers,
        expected_codes=m.expected_codes,
        expected_body=m.expected_body,
        follow_redirects=m.follow_redirects,
        allow_insecure=m.allow_insecure,
        timeout=float(m.timeout),
        retries=m.retries,
        interval=float(m.interval),
    )


def plan(
    targets: Iterable[ProbeTarget],
    *,
    vantage_points: Sequence[str] = ("local",),
    connect_to: Mapping[str, str] | None = None,
    user_agent_mode: str = "tunnel-lb",
) -> list[Job]:
    """Deduplicated jobs for ``targets``, one per (probe identity, vantage point), in order."""
    groups: dict[Probe, list[ProbeTarget]] = {}
    for t in targets:
        groups.setdefault(probe_for(t, connect_to=connect_to), []).append(t)
    jobs: list[Job] = []
    for probe, members in groups.items():
        pools = list(dict.fromkeys(t.pool for t in members))
        pool_ids = list(dict.fromkeys(t.pool_id for t in members))
        ua = user_agent(user_agent_mode, pools, pool_ids)
        shared = dataclasses.replace(probe, user_agent=ua)
        fanout = tuple(dict.fromkeys((t.pool, t.endpoint) for t in members))
        routes = tuple(dict.fromkeys((t.pool, t.endpoint, t.member) for t in members))
        jobs.extend(
            Job(probe=shared, vantage=v, fanout=fanout, routes=routes) for v in vantage_points
        )
    return jobs


def jobs_for_config(config: Config, targets: Iterable[ProbeTarget]) -> list[Job]:
    """:func:`plan` with the engine settings and ``connect_to`` of ``config``."""
    return plan(
        targets,
        vantage_points=config.engine.vantage_points,
        connect_to=config.connect_to,
        user_agent_mode=config.engine.probe_user_agent,
    )
