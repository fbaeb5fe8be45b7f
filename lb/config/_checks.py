"""Rules that span fields and objects, and the resolution of pool references to names.

The generic parser has already checked every field on its own (type, range, choices); what is
left needs context: other fields of the same object, other objects, or the data center table.
Each function below checks one kind of object and reports to a :class:`Report`; rule numbers
refer to the rules indexed in ``docs/cloudflare-rules.md`` and are listed in ``docs/config.md``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping

from lb.config._cluster import resolve_engine
from lb.config._items import Item, Parsed, Seen
from lb.config._net import cidr_problem, host_port_problem
from lb.config._passive import check_engine_passive, check_pool_passive
from lb.config._report import Report, did_you_mean, fmt_number
from lb.config._source import Segment, Where
from lb.config.expressions import ExpressionError, compile_condition
from lb.config.hosts import connect_key, is_loopback, normalise_host, split_host_port
from lb.config.model import (
    REGIONS,
    Config,
    Datacenter,
    EngineSettings,
    LoadBalancer,
    Monitor,
    MonitorGroup,
    Origin,
    Pool,
    PoolSet,
    RandomSteering,
    RuleOverrides,
)
from lb.config.tunnels import TUNNEL_SUFFIX, looks_like_tunnel, tunnel_uuid

__all__ = ["build_config"]

_POOL_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_EXPECTED_CODES = re.compile(r"^[1-5]([0-9]{2}|xx)( *, *[1-5]([0-9]{2}|xx))*$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_DATACENTER_CODE = re.compile(r"^[A-Z0-9]+$")
_AFFINITY_TTL = {"cookie": (1800, 604800), "ip_cookie": (1800, 604800), "header": (30, 3600)}
_EXAMPLE_UUID = "6ff42ae2-765d-4adf-8112-31c55c1551ef"
CONNECT_FAILURE_CODES = frozenset({521, 522, 523, 525, 526})
"""What a failed connection to an endpoint ends in (refused, timed out, unreachable, TLS
handshake failed, invalid certificate): the only statuses a zero-downtime retry can follow,
since the proxy retries before any byte of the request was sent (docs/proxy.md)."""

At = Callable[..., Where]


def build_config(parsed: Parsed, report: Report) -> Config:
    """Check everything and return the configuration with pool references resolved to names.

    The result is only meaningful when ``report`` has no errors afterwards.
    """
    _check_datacenters(parsed, report)
    _check_engine(parsed, report)
    _check_tunnels(parsed, report)
    connect_to = _check_connect_to(parsed, report)
    monitors = _check_monitors(parsed, report)
    groups = _check_monitor_groups(parsed, monitors, report)
    pools = _check_pools(parsed, monitors, groups, report)
    load_balancers = [
        _check_load_balancer(item, parsed, pools, report) for item in parsed.load_balancers
    ]
    _check_monitor_only_hosts(pools, load_balancers, report)
    _check_unique_load_balancers(parsed.load_balancers, report)
    return Config(
        monitors=tuple(monitors.values()),
        monitor_groups=tuple(groups.values()),
        pools=tuple(pools.pools),
        load_balancers=tuple(load_balancers),
        tunnels=tuple(item.value for item in parsed.tunnels),
        datacenters={code: item.value for code, item in parsed.datacenters.items()},
        connect_to=connect_to,
        engine=resolve_engine(parsed.engine, report),
        source=parsed.files,
    )


# --------------------------------------------------------------------------- shared helpers


def _check_step(value: float, step: float, where: Where, report: Report) -> None:
    """The API schema's ``multipleOf``: 0.01 for an endpoint weight, 0.1 for default weights."""
    if abs(round(value / step) * step - value) > 1e-9:
        message = f"must be a multiple of {step:g} (Cloudflare's API), got {fmt_number(value)}"
        report.error(where, message)


def _check_coordinates(item: Item[Pool] | Item[Datacenter], report: Report) -> None:
    """R23: latitude and longitude are set together or not at all."""
    if (item.value.latitude is None) != (item.value.longitude is None):
        field = "latitude" if item.value.longitude is None else "longitude"
        report.error(item.at(field), "latitude and longitude must be set together")


def _check_datacenter_code(code: str, where: Where, parsed: Parsed, report: Report) -> None:
    if code not in parsed.datacenters:
        hint = did_you_mean(code, parsed.datacenters)
        report.error(where, f'unknown data center "{code}"{hint}; add it under `datacenters`')


# --------------------------------------------------------------------------- our sections


def _check_datacenters(parsed: Parsed, report: Report) -> None:
    for code, item in parsed.datacenters.items():
        if not _DATACENTER_CODE.match(code):
            report.error(item.at(), "data center codes are upper-case letters and digits")
        country = item.value.country
        if country and not _COUNTRY.match(country):
            report.error(item.at("country"), f'must be a two-letter country code, got "{country}"')
        _check_coordinates(item, report)


def _check_engine(parsed: Parsed, report: Report) -> None:
    item, engine = parsed.engine, parsed.engine.value
    if engine.datacenter:
        _check_datacenter_code(engine.datacenter, item.at("datacenter"), parsed, report)
    if not engine.vantage_points:
        report.error(item.at("vantage_points"), "needs at least one vantage point")
    seen = Seen(report)
    for i, name in enumerate(engine.vantage_points):
        if not name:
            report.error(item.at("vantage_points", i), "must not be empty")
        seen.add(name, item.at("vantage_points", i), "vantage point")
    for i, cidr in enumerate(engine.trusted_proxies):
        if problem := cidr_problem(cidr):
            report.error(item.at("trusted_proxies", i), problem)
    if problem := host_port_problem(engine.admin, allow_port_zero=True):
        report.error(item.at("admin"), problem)
    else:
        _check_admin_access(item, report)
    for i, listener in enumerate(engine.listen):
        if bool(listener.certificate) != bool(listener.key):
            report.error(item.at("listen", i), "certificate and key must be set together")
    for i, code in enumerate(engine.zero_downtime_failover_codes):
        if code not in CONNECT_FAILURE_CODES:
            known = ", ".join(map(str, sorted(CONNECT_FAILURE_CODES)))
            message = (
                f"{code} can never trigger a retry: only a failed connection to the endpoint "
                f"does, and it ends in one of {known}"
            )
            report.error(item.at("zero_downtime_failover_codes", i), message)
    check_engine_passive(item, report)


def _check_admin_access(item: Item[EngineSettings], report: Report) -> None:
    """An admin API beyond loopback needs a token (``lb.admin_guard``), and is worth a warning
    even with one: it can reload the configuration."""
    engine = item.value
    if engine.admin_token_file and engine.admin_token_env:
        message = "set admin_token_file or admin_token_env, not both"
        report.error(item.at("admin_token_env"), message)
    for i, name in enumerate(engine.admin_names):
        if normalise_host(name) is None:
            report.error(item.at("admin_names", i), f'"{name}" is not a host name or IP address')
    host = split_host_port(engine.admin)[0]
    if is_loopback(host):
        return
    where = "every interface" if host in ("0.0.0.0", "::") else host
    if engine.admin_token_file or engine.admin_token_env:
        message = (
            f"the admin API listens on {where}, reachable from other machines; "
            "only the token protects it"
        )
        report.warn(item.at("admin"), message)
    else:
        message = (
            f"the admin API would listen on {where}, beyond this machine, without a token: "
            "set admin_token_file or admin_token_env, or bind 127.0.0.1"
        )
        report.error(item.at("admin"), message)


def _check_tunnels(parsed: Parsed, report: Report) -> None:
    for item in parsed.tunnels:
        tunnel = item.value
        if tunnel_uuid(tunnel.id + TUNNEL_SUFFIX) != tunnel.id:
            message = f'tunnel ids are lowercase UUIDs such as "{_EXAMPLE_UUID}", got "{tunnel.id}"'
            report.error(item.at(), message)
        names = Seen(report)
        for i, replica in enumerate(tunnel.replicas):
            names.add(replica.name, item.at("replicas", i, "name"), "replica name")
            for j, code in enumerate(replica.datacenters):
                where = item.at("replicas", i, "datacenters", j)
                _check_datacenter_code(code, where, parsed, report)


def _check_connect_to(parsed: Parsed, report: Report) -> dict[str, str]:
    """``host:port`` on both sides; keys are stored as :func:`lb.config.hosts.connect_key`."""
    out: dict[str, str] = {}
    seen = Seen(report)
    for item in parsed.connect_to:
        key = str(item.path[-1])
        if problem := host_port_problem(key):
            report.error(item.at(), f"key: {problem}")
        if problem := host_port_problem(item.value):
            report.error(item.at(), problem)
        try:
            normal = connect_key(*split_host_port(key)) or key.lower()
        except ValueError:
            normal = key.lower()  # reported above
        if seen.add(normal, item.at(), "connect_to entry", shown=key):
            out[normal] = item.value
    return out


# --------------------------------------------------------------------------- monitors


def _check_monitors(parsed: Parsed, report: Report) -> dict[str, Monitor]:
    """Monitors by id, with ``expected_codes`` normalised to lower case (``2XX`` -> ``2xx``)."""
    minimum = parsed.engine.value.minimum_interval
    seen = Seen(report)
    out: dict[str, Monitor] = {}
    for item in parsed.monitors:
        monitor = item.value
        codes = monitor.expected_codes.lower()
        if not _EXPECTED_CODES.match(codes):
            message = (
                'must be a status code like "200", a class like "2xx", or a comma-separated '
                f'list of them like "200,302", got "{codes}"'
            )
            report.error(item.at("expected_codes"), message)
        if not parsed.engine.value.fractional_monitor_times:
            _check_whole_seconds(item, report)
        _check_interval(item, minimum, report)
        if monitor.type == "tcp" and not monitor.port:
            report.error(item.at("port"), "a tcp monitor needs a port")
        for name in monitor.header:
            if name.lower() == "user-agent":
                message = "the probe User-Agent cannot be overridden; this header is ignored"
                report.warn(item.at("header", name), message)
        if seen.add(monitor.id, item.at("id"), "monitor id"):
            out[monitor.id] = dataclasses.replace(monitor, expected_codes=codes)
    return out


def _check_whole_seconds(item: Item[Monitor], report: Report) -> None:
    """Cloudflare's API takes whole seconds, and a timeout of 1 to 10 of them; a
    configuration may opt out with ``engine.fractional_monitor_times`` (rehearsals)."""
    monitor = item.value
    if not 1 <= monitor.timeout <= 10:
        message = f"must be between 1 and 10, got {fmt_number(monitor.timeout)}"
        report.error(item.at("timeout"), message)
        return
    for name in ("interval", "timeout"):
        value = getattr(monitor, name)
        if value != int(value):
            message = (
                f"must be a whole number of seconds (an integer in Cloudflare's API), "
                f"got {fmt_number(value)}; engine.fractional_monitor_times allows fractions"
            )
            report.error(item.at(name), message)


def _check_interval(item: Item[Monitor], minimum: float, report: Report) -> None:
    """The plan minimum is an error; R9's ``interval <= (retries + 1) * timeout`` a warning."""
    monitor = item.value
    if monitor.interval < minimum:
        message = f"must be at least engine.minimum_interval ({fmt_number(minimum)})"
        report.error(item.at("interval"), f"{message}, got {fmt_number(monitor.interval)}")
        return
    budget = (monitor.retries + 1) * monitor.timeout
    if monitor.interval <= budget:
        message = (
            f"interval {fmt_number(monitor.interval)} is not longer than "
            f"(retries + 1) * timeout = {fmt_number(budget)}; "
            "a check may still be retrying when the next one starts"
        )
        report.warn(item.at("interval"), message)


def _check_monitor_groups(
    parsed: Parsed, monitors: Mapping[str, Monitor], report: Report
) -> dict[str, MonitorGroup]:
    """Monitor groups by id (R16): members name known monitors, and some member can vote."""
    seen = Seen(report)
    out: dict[str, MonitorGroup] = {}
    for item in parsed.monitor_groups:
        group = item.value
        ids = Seen(report)
        for i, member in enumerate(group.members):
            at = item.at("members", i, "monitor_id")
            ids.add(member.monitor_id, at, "member monitor_id")
            if member.monitor_id not in monitors and member.monitor_id not in parsed.broken:
                hint = did_you_mean(member.monitor_id, monitors)
                report.error(at, f'unknown monitor "{member.monitor_id}"{hint}')
            if member.monitoring_only and member.must_be_healthy:
                message = (
                    "a monitoring_only member never affects health: must_be_healthy is ignored"
                )
                report.warn(item.at("members", i, "must_be_healthy"), message)
        if not group.members:
            report.error(item.at("members"), "a monitor group needs at least one member")
        elif not any(m.enabled and not m.monitoring_only for m in group.members):
            message = "no enabled member that is not monitoring_only: nothing would decide health"
            report.error(item.at("members"), message)
        if seen.add(group.id, item.at("id"), "monitor group id"):
            out[group.id] = group
    return out


# --------------------------------------------------------------------------- pools


class _PoolIndex:
    """Pools by id and by name, so references in either form resolve to the name."""

    def __init__(self, report: Report, broken: set[str]) -> None:
        self.pools: list[Pool] = []
        self._report = report
        self._broken = broken
        self._seen = Seen(report)
        self._by_ref: dict[str, Pool] = {}
        self.monitor_hosts: dict[str, tuple[Item[Pool], list[tuple[int, str]]]] = {}
        """Pool name -> its tunnel endpoints whose Host only the monitor sets: (index, Host)."""

    def add(self, pool: Pool, item: Item[Pool]) -> None:
        self.pools.append(pool)
        keys = {pool.name: "name"} if pool.id == pool.name else {pool.name: "name", pool.id: "id"}
        for key, field in keys.items():
            if self._seen.add(key, item.at(field), f"pool {field}"):
                self._by_ref[key] = pool

    def get(self, ref: str) -> Pool | None:
        return self._by_ref.get(ref)

    def resolve(self, ref: str, where: Where) -> str:
        """The name of the pool whose id or name is ``ref``; unknown refs are reported."""
        pool = self._by_ref.get(ref)
        if pool is None and ref in self._broken:
            return ref  # the pool itself failed to parse and was reported
        if pool is None:
            hint = did_you_mean(ref, self._by_ref)
            self._report.error(where, f'unknown pool "{ref}"{hint}')
            return ref
        return pool.name


def _check_pools(
    parsed: Parsed,
    monitors: Mapping[str, Monitor],
    groups: Mapping[str, MonitorGroup],
    report: Report,
) -> _PoolIndex:
    index = _PoolIndex(report, parsed.broken)
    for item in parsed.pools:
        pool = item.value
        pool = dataclasses.replace(pool, id=pool.id or pool.name)
        index.add(pool, item)
        _check_pool_fields(item, report)
        check_pool_passive(item, report)
        monitor = _pool_monitor(item, monitors, parsed.broken, report)
        if pool.monitor_group is not None and pool.monitor is None:
            monitor = _pool_group(item, monitors, groups, parsed.broken, report)
        monitor_only = _check_origins(item, monitor, report)
        if monitor_only:
            index.monitor_hosts[pool.name] = (item, monitor_only)
    return index


def _check_pool_fields(item: Item[Pool], report: Report) -> None:
    pool = item.value
    if not _POOL_NAME.match(pool.name):
        message = f'pool names may only contain A-Z, a-z, 0-9, "_" and "-", got "{pool.name}"'
        report.error(item.at("name"), message)
    _check_coordinates(item, report)
    if not pool.origins:
        report.error(item.at("origins"), "a pool needs at least one endpoint")
    elif pool.minimum_origins > len(pool.origins):
        message = (
            f"{pool.minimum_origins} healthy endpoints needed but the pool has "
            f"{len(pool.origins)}: it can never be healthy"
        )
        report.warn(item.at("minimum_origins"), message)
    sources = pool.health_sources
    if sources is not None and sorted(sources) != ["global", "regional"]:
        message = (
            'must be unset or ["regional", "global"] (regional health with the global '
            "decision as its fallback; Cloudflare accepts nothing else)"
        )
        report.error(item.at("health_sources"), message)
    if pool.monitor_group is not None and pool.monitor is not None:
        message = "a pool takes either `monitor` or `monitor_group`, not both"
        report.error(item.at("monitor_group"), message)
    _check_retry_on(item, report)


def _check_retry_on(item: Item[Pool] | Item[LoadBalancer], report: Report) -> None:
    """``retry_on`` must retry something, and name each condition once; ``truncated`` and
    ``buffer_response`` go together (one is useless without the other)."""
    retry_on = item.value.retry_on
    if retry_on is None:
        return
    if not retry_on.conditions and not retry_on.statuses:
        message = "retries nothing: set conditions or statuses, or remove retry_on"
        report.error(item.at("retry_on"), message)
    for name in ("conditions", "statuses"):
        values: tuple[object, ...] = getattr(retry_on, name)
        for i, value in enumerate(values):
            if value in values[:i]:
                report.error(item.at("retry_on", name, i), f"{value} is listed twice")
    truncated = "truncated" in retry_on.conditions
    if truncated and not retry_on.buffer_response:
        message = "truncated needs buffer_response (bytes): a streamed response cannot be retried"
        report.error(item.at("retry_on", "conditions"), message)
    elif retry_on.buffer_response and not truncated:
        message = "buffer_response retries nothing without truncated in conditions"
        report.error(item.at("retry_on", "buffer_response"), message)


def _pool_monitor(
    item: Item[Pool], monitors: Mapping[str, Monitor], broken: set[str], report: Report
) -> Monitor | None:
    """The pool's monitor; R49: a tcp monitor cannot check tunnel endpoints."""
    pool = item.value
    if pool.monitor is None:
        return None
    monitor = monitors.get(pool.monitor)
    if monitor is None:
        if pool.monitor not in broken:  # else the monitor itself failed and was reported
            hint = did_you_mean(pool.monitor, monitors)
            report.error(item.at("monitor"), f'unknown monitor "{pool.monitor}"{hint}')
        return None
    if monitor.type == "tcp" and any(o.tunnel_id for o in pool.origins):
        message = (
            "a tcp monitor cannot check tunnel endpoints; use an https monitor with a Host header"
        )
        report.error(item.at("monitor"), message)
    return monitor


def _pool_group(
    item: Item[Pool],
    monitors: Mapping[str, Monitor],
    groups: Mapping[str, MonitorGroup],
    broken: set[str],
    report: Report,
) -> Monitor | None:
    """The pool's monitor group; returns its first http(s) member for the Host checks."""
    ref = item.value.monitor_group
    group = groups.get(ref) if ref is not None else None
    if ref is None or group is None:
        if ref is not None and ref not in broken:
            hint = did_you_mean(ref, groups)
            report.error(item.at("monitor_group"), f'unknown monitor group "{ref}"{hint}')
        return None
    members = [monitors[m.monitor_id] for m in group.active if m.monitor_id in monitors]
    if any(m.type == "tcp" for m in members) and any(o.tunnel_id for o in item.value.origins):
        message = (
            f'monitor group "{ref}" has a tcp member, which cannot check tunnel endpoints; '
            "use https monitors with a Host header"
        )
        report.error(item.at("monitor_group"), message)
    return next((m for m in members if m.type in ("http", "https")), None)


def _check_origins(
    item: Item[Pool], monitor: Monitor | None, report: Report
) -> list[tuple[int, str]]:
    """The endpoint checks; returns the tunnel endpoints whose Host only the monitor sets
    (index, that Host), which :func:`_check_monitor_only_hosts` weighs against the load
    balancers that send traffic to the pool."""
    names, addresses = Seen(report), Seen(report)
    monitor_only: list[tuple[int, str]] = []
    for i, origin in enumerate(item.value.origins):

        def at(*sub: Segment, i: int = i) -> Where:
            return item.at("origins", i, *sub)

        names.add(origin.name, at("name"), "endpoint name")
        _check_step(origin.weight, 0.01, at("weight"), report)
        _check_address(origin, at, addresses, report)
        _check_origin_header(origin, at, report)
        probed_over_http = monitor is not None and monitor.type in ("http", "https")
        if origin.tunnel_id and probed_over_http and not _probe_host(origin, monitor):
            message = (
                "probes to this tunnel carry no Host header, so cloudflared answers from its "
                "catch-all rule; set header.Host here or on the monitor"
            )
            report.warn(at("address"), message)
        elif origin.tunnel_id and probed_over_http and not origin.host_header:
            host = _probe_host(origin, monitor)
            assert host is not None  # the branch above took the endpoints without one
            monitor_only.append((i, host))
    return monitor_only


def _check_monitor_only_hosts(
    pools: _PoolIndex, load_balancers: list[LoadBalancer], report: Report
) -> None:
    """R47: traffic to a tunnel endpoint without its own ``header.Host`` carries the load
    balancer's hostname, probes carry the monitor's Host.  Only when a load balancer that
    sends traffic to the pool has another name may the two land on different ingress rules;
    a load balancer named like the monitor's Host sends what the probes send."""
    users: dict[str, list[str]] = {}
    for lb in load_balancers:
        for name in _used_pools(lb):
            users.setdefault(name, []).append(lb.name)
    for pool_name, (item, endpoints) in pools.monitor_hosts.items():
        for i, host in endpoints:
            probed = _same_host(host)
            other = next((n for n in users.get(pool_name, ()) if _same_host(n) != probed), None)
            if other is None:
                continue
            message = (
                f'only the monitor sets a Host ("{host}"): probes reach its ingress rule, but '
                f'traffic through load balancer "{other}" carries that hostname and may land '
                "on cloudflared's catch-all; set header.Host on this endpoint"
            )
            report.warn(item.at("origins", i, "address"), message)


def _same_host(name: str) -> str:
    """The form two Host values are compared in (cloudflared ignores case and port, R48)."""
    return normalise_host(name) or name


def _probe_host(origin: Origin, monitor: Monitor | None) -> str | None:
    """R5 without the address fallback: the Host a probe would carry explicitly."""
    return origin.host_header or (monitor.host_header if monitor else None)


def _check_address(origin: Origin, at: At, addresses: Seen, report: Report) -> None:
    """R46 (tunnel address form) and R22 (one address or tunnel once per pool)."""
    address = origin.address
    if not address:
        report.error(at("address"), "must not be empty")
        return
    if looks_like_tunnel(address) and origin.tunnel_id is None:
        message = f'tunnel addresses are "<lowercase uuid>.cfargotunnel.com", got "{address}"'
        report.error(at("address"), message)
    what = "tunnel" if looks_like_tunnel(address) else "address"
    note = "; a pool may use an address only once, whatever the port"
    addresses.add(address.lower().rstrip("."), at("address"), what, shown=address, note=note)


def _check_origin_header(origin: Origin, at: At, report: Report) -> None:
    """Cloudflare lets an endpoint set only its Host header, with a single value."""
    for name, values in origin.header.items():
        if name.lower() != "host":
            report.error(at("header", name), 'only "Host" can be set on an endpoint')
        elif len(values) != 1:
            report.error(at("header", name), f"Host takes exactly one value, got {len(values)}")


# --------------------------------------------------------------------------- load balancers


def _check_unique_load_balancers(items: list[Item[LoadBalancer]], report: Report) -> None:
    """Names are host names, so they are compared case-insensitively."""
    names, ids = Seen(report), Seen(report)
    for item in items:
        lb = item.value
        names.add(lb.name.lower().rstrip("."), item.at("name"), "load balancer name", lb.name)
        if lb.id:
            ids.add(lb.id, item.at("id"), "load balancer id")


def _check_load_balancer(
    item: Item[LoadBalancer], parsed: Parsed, pools: _PoolIndex, report: Report
) -> LoadBalancer:
    resolved = _resolve_references(item, pools, report)
    used = _used_pools(resolved)
    if normalise_host(item.value.name) is None:
        # The proxy answers a Host that is not a host name with 400 before any lookup.
        message = f'"{item.value.name}" is not a host name: no request could reach it'
        report.error(item.at("name"), message)
    _check_geo_keys(item, parsed, report)
    _check_weight_steps(item, report)
    _check_affinity(item, report)
    _check_rules(item, report)
    _check_pool_sets(item, parsed, report)
    _check_retry_on(item, report)
    _check_policy(item, [pools.get(name) for name in used], report)
    if not item.value.proxied and not report.failed(item.at("proxied")):
        _check_dns_only(item, [pools.get(name) for name in used], report)
    return resolved


def _resolve_references(
    item: Item[LoadBalancer], pools: _PoolIndex, report: Report
) -> LoadBalancer:
    """Every pool id or name the load balancer mentions, replaced by the pool's name."""
    lb = item.value

    def names(refs: Iterable[str], *sub: Segment) -> tuple[str, ...]:
        out: list[str] = []
        seen = Seen(report)
        for i, ref in enumerate(refs):
            name = pools.resolve(ref, item.at(*sub, i))
            if seen.add(name, item.at(*sub, i), "pool in this list", shown=ref):
                out.append(name)
        return tuple(out)

    def mapping(field: str, value: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        return {key: names(refs, field, key) for key, refs in value.items()}

    def pool_weights(refs: Mapping[str, float], *sub: Segment) -> dict[str, float]:
        out: dict[str, float] = {}
        seen = Seen(report)
        for ref, weight in refs.items():
            where = item.at(*sub, "pool_weights", ref)
            name = pools.resolve(ref, where)
            if seen.add(name, where, "pool weight", shown=ref):
                out[name] = weight
        return out

    def weights(steering: RandomSteering, *sub: Segment) -> RandomSteering:
        return dataclasses.replace(steering, pool_weights=pool_weights(steering.pool_weights, *sub))

    def overrides(o: RuleOverrides, *sub: Segment) -> RuleOverrides:
        """A custom rule's overrides with their pool references resolved the same way."""
        return dataclasses.replace(
            o,
            default_pools=None
            if o.default_pools is None
            else names(o.default_pools, *sub, "default_pools"),
            pools=None if o.pools is None else names(o.pools, *sub, "pools"),
            pool_weights=None if o.pool_weights is None else pool_weights(o.pool_weights, *sub),
            fallback_pool=None
            if o.fallback_pool is None
            else pools.resolve(o.fallback_pool, item.at(*sub, "fallback_pool")),
            region_pools=None
            if o.region_pools is None
            else {k: names(v, *sub, "region_pools", k) for k, v in o.region_pools.items()},
            country_pools=None
            if o.country_pools is None
            else {k: names(v, *sub, "country_pools", k) for k, v in o.country_pools.items()},
            pop_pools=None
            if o.pop_pools is None
            else {k: names(v, *sub, "pop_pools", k) for k, v in o.pop_pools.items()},
            random_steering=None
            if o.random_steering is None
            else weights(o.random_steering, *sub, "random_steering"),
        )

    if not lb.default_pools:
        report.error(item.at("default_pools"), "must list at least one pool")
    rules = tuple(
        dataclasses.replace(rule, overrides=overrides(rule.overrides, "rules", i, "overrides"))
        for i, rule in enumerate(lb.rules)
    )

    def pool_set(i: int, ps: PoolSet) -> PoolSet:
        o, sub = ps.overrides, ("pool_sets", i, "overrides")
        resolved = dataclasses.replace(
            o,
            pools=names(o.pools, *sub, "pools"),
            pool_weights=pool_weights(o.pool_weights, *sub),
            fallback_pool=None
            if o.fallback_pool is None
            else pools.resolve(o.fallback_pool, item.at(*sub, "fallback_pool")),
        )
        return dataclasses.replace(ps, overrides=resolved)

    return dataclasses.replace(
        lb,
        id=lb.id or lb.name,
        default_pools=names(lb.default_pools, "default_pools"),
        fallback_pool=pools.resolve(lb.fallback_pool, item.at("fallback_pool")),
        region_pools=mapping("region_pools", lb.region_pools),
        country_pools=mapping("country_pools", lb.country_pools),
        pop_pools=mapping("pop_pools", lb.pop_pools),
        random_steering=weights(lb.random_steering, "random_steering"),
        rules=rules,
        pool_sets=tuple(pool_set(i, ps) for i, ps in enumerate(lb.pool_sets or ())) or None,
    )


def _used_pools(lb: LoadBalancer) -> list[str]:
    """Every pool name a load balancer may send traffic to, its custom rules' overrides
    included, each once, in a stable order."""
    lists = [lb.default_pools, (lb.fallback_pool,), tuple(lb.random_steering.pool_weights)]
    for mapping in (lb.region_pools, lb.country_pools, lb.pop_pools):
        lists.extend(mapping.values())
    for rule in lb.rules:
        o = rule.overrides
        lists += [o.default_pools or (), (o.fallback_pool,) if o.fallback_pool else ()]
        lists += [o.pools or (), tuple(o.pool_weights or ())]
        if o.random_steering is not None:
            lists.append(tuple(o.random_steering.pool_weights))
        for m in (o.region_pools, o.country_pools, o.pop_pools):
            lists.extend((m or {}).values())
    for ps in lb.pool_sets or ():
        p = ps.overrides
        lists += [p.pools, (p.fallback_pool,) if p.fallback_pool else (), tuple(p.pool_weights)]
    return list(dict.fromkeys(name for names in lists for name in names))


def _check_weight_steps(item: Item[LoadBalancer], report: Report) -> None:
    """Default pool weights are multiples of 0.1 (the API schema's ``multipleOf`` on
    ``random_steering.default_weight`` and ``pool_default_weight``; the ``pool_weights`` maps
    have no such constraint)."""
    lb = item.value
    places: list[tuple[tuple[Segment, ...], float | None]] = [
        (("random_steering", "default_weight"), lb.random_steering.default_weight)
    ]
    for i, rule in enumerate(lb.rules):
        o, at = rule.overrides, ("rules", i, "overrides")
        places.append(((*at, "pool_default_weight"), o.pool_default_weight))
        if o.random_steering is not None:
            default = o.random_steering.default_weight
            places.append(((*at, "random_steering", "default_weight"), default))
    for i, ps in enumerate(lb.pool_sets or ()):
        where = ("pool_sets", i, "overrides", "pool_default_weight")
        places.append((where, ps.overrides.pool_default_weight))
    for path, weight in places:
        if weight is not None:
            _check_step(weight, 0.1, item.at(*path), report)


def _check_geo_keys(item: Item[LoadBalancer], parsed: Parsed, report: Report) -> None:
    lb = item.value
    _check_locations(
        [(r, item.at("region_pools", r)) for r in lb.region_pools],
        [(c, item.at("country_pools", c)) for c in lb.country_pools],
        [(p, item.at("pop_pools", p)) for p in lb.pop_pools],
        parsed,
        report,
    )


Located = list[tuple[str, Where]]


def _check_locations(
    regions: Located, countries: Located, pops: Located, parsed: Parsed, report: Report
) -> None:
    """Region, country and data center codes (geo mappings, pool-set topologies)."""
    for region, where in regions:
        if region not in REGIONS:
            report.error(where, f'unknown region "{region}"{did_you_mean(region, REGIONS)}')
    for country, where in countries:
        if not _COUNTRY.match(country):
            message = f'must be a two-letter upper-case country code such as "US", got "{country}"'
            report.error(where, message)
    for code, where in pops:
        if code not in parsed.datacenters:  # an export may name any of Cloudflare's colos
            hint = did_you_mean(code, parsed.datacenters)
            message = (
                f'data center "{code}" is not in the data center table{hint}, so this never '
                "matches; add it under `datacenters` if requests can enter there"
            )
            report.warn(where, message)


_AFFINITY_FIELDS = ("session_affinity", "session_affinity_ttl", "session_affinity_attributes")

Problem = tuple[tuple[Segment, ...], str]


def _check_affinity(item: Item[LoadBalancer], report: Report) -> None:
    """R41 on the load balancer, then on the load balancer as each custom rule that touches
    affinity leaves it: a rule's overrides must not make an invalid combination either."""
    lb = item.value
    own = _affinity_problems(lb)
    for path, message in own:
        report.error(item.at(*path), message)
    for i, rule in enumerate(lb.rules):
        changes = {k: v for k, v in rule.overrides.changes().items() if k in _AFFINITY_FIELDS}
        if not changes:
            continue
        for path, message in _affinity_problems(dataclasses.replace(lb, **changes)):
            if (path, message) in own:
                continue  # the load balancer's own problem, reported above
            field = path[0] if path[0] in changes else next(iter(changes))
            rest = path[1:] if path[0] in changes else ()
            where = item.at("rules", i, "overrides", field, *rest)
            report.error(where, f"{message} (the load balancer with this rule's overrides)")


def _affinity_problems(lb: LoadBalancer) -> list[Problem]:
    """R41: TTL ranges per mode, SameSite=None needs Secure, header mode needs headers."""
    out: list[Problem] = []
    attributes = lb.session_affinity_attributes
    bounds = _AFFINITY_TTL.get(lb.affinity)
    ttl = lb.session_affinity_ttl
    if bounds is not None and ttl is not None and not bounds[0] <= ttl <= bounds[1]:
        message = f"must be between {bounds[0]} and {bounds[1]} for {lb.affinity} affinity"
        out.append((("session_affinity_ttl",), f"{message}, got {fmt_number(ttl)}"))
    if attributes.samesite == "None" and attributes.secure == "Never":
        message = 'samesite "None" needs secure "Auto" or "Always", not "Never"'
        out.append((("session_affinity_attributes", "samesite"), message))
    if lb.affinity == "header":
        if not attributes.headers:
            message = "header affinity needs at least one header name"
            out.append((("session_affinity_attributes", "headers"), message))
        if attributes.zero_downtime_failover == "sticky":
            message = '"sticky" is not supported with header affinity'
            out.append((("session_affinity_attributes", "zero_downtime_failover"), message))
    return out


_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _check_rules(item: Item[LoadBalancer], report: Report) -> None:
    """R32: every condition compiles; fixed responses fit Cloudflare's limits."""
    lb = item.value
    for i, rule in enumerate(lb.rules):
        try:
            condition = compile_condition(rule.condition)
        except ExpressionError as exc:
            report.error(item.at("rules", i, "condition"), f"{exc.message} (column {exc.column})")
        else:
            if condition.extensions:
                used = ", ".join(condition.extensions)
                message = f"{used}: tunnel-lb extension, not accepted by Cloudflare"
                report.warn(item.at("rules", i, "condition"), message)
        fixed = rule.fixed_response
        if fixed is not None:
            for name, limit in (("content_type", 32), ("location", 2048), ("message_body", 1024)):
                value = getattr(fixed, name)
                where = item.at("rules", i, "fixed_response", name)
                if len(value) > limit:
                    report.error(where, f"must be at most {limit} characters")
                elif name != "message_body" and _HEADER_UNSAFE.search(value):
                    report.error(where, "must not contain control characters (a header value)")
        if len(rule.name) > 200:
            report.error(item.at("rules", i, "name"), "must be at most 200 characters")
        o = rule.overrides
        if o.pools is not None and fixed is not None:
            message = "overrides.pools and fixed_response are mutually exclusive"
            report.error(item.at("rules", i, "fixed_response"), message)
        if o.random_steering is not None:
            for name in ("pool_weights", "pool_default_weight"):
                if getattr(o, name) is not None:
                    message = f"{name} and random_steering are mutually exclusive"
                    report.error(item.at("rules", i, "overrides", name), message)
    if lb.rules and lb.effective_policy == "geo":
        message = "custom rules do not work with geo steering on Cloudflare; tunnel-lb applies them"
        report.warn(item.at("rules"), message)


_POOL_SETS_LIMIT = 1000
"""Pool sets per load balancer, and entries per topology list (pool-sets docs, Limits)."""


def _check_pool_sets(item: Item[LoadBalancer], parsed: Parsed, report: Report) -> None:
    """R31: the pool-sets page's validation errors, each with Cloudflare's identifier, so
    that an export Cloudflare would refuse is refused here too, and known locations."""
    sets = item.value.pool_sets or ()
    if len(sets) > _POOL_SETS_LIMIT:
        message = f"at most {_POOL_SETS_LIMIT} pool sets, got {len(sets)} (POOL_SETS_TOO_LARGE)"
        report.error(item.at("pool_sets"), message)
    for i, ps in enumerate(sets):
        if not ps.overrides.pools and ps.fixed_response is None:
            message = "a pool set needs overrides.pools or a fixed_response (POOL_SET_NO_INTENT)"
            report.error(item.at("pool_sets", i), message)
        if ps.overrides.pools and ps.fixed_response is not None:
            message = "overrides.pools and fixed_response are mutually exclusive"
            report.error(item.at("pool_sets", i, "fixed_response"), message)
        if len(ps.name) > 200:
            report.error(item.at("pool_sets", i, "name"), "must be at most 200 characters")
        if ps.match is None:
            continue
        at = ("pool_sets", i, "match")
        topology = ps.match.topology
        if ps.match.default and topology is not None:
            message = "default and topology cannot be combined (POOL_SET_DEFAULT_WITH_MATCH)"
            report.error(item.at(*at, "default"), message)
        if not ps.match.default and topology is None:
            message = (
                'sets neither "default: true" nor a topology, so it would never match; '
                "omit match to match every request (POOL_SET_EMPTY_MATCH)"
            )
            report.error(item.at(*at), message)
        if topology is None:
            continue
        lists = {"pops": topology.pops, "countries": topology.countries}
        lists["regions"] = topology.regions
        if not any(lists.values()):
            message = "a topology needs pops, countries or regions (POOL_SET_EMPTY_TOPOLOGY)"
            report.error(item.at(*at, "topology"), message)
        for name, values in lists.items():
            where = item.at(*at, "topology", name)
            if len(values) > _POOL_SETS_LIMIT:
                message = f"at most {_POOL_SETS_LIMIT} entries (POOL_SET_TOPOLOGY_TOO_LARGE)"
                report.error(where, message)
            seen = Seen(report)
            for j, value in enumerate(values):
                seen.add(value, item.at(*at, "topology", name, j), f"entry of {name}")
        located = {
            name: [(v, item.at(*at, "topology", name, j)) for j, v in enumerate(values)]
            for name, values in lists.items()
        }
        _check_locations(located["regions"], located["countries"], located["pops"], parsed, report)


def _check_policy(item: Item[LoadBalancer], used: list[Pool | None], report: Report) -> None:
    """Warnings for a steering policy that lacks the data it steers by."""
    lb = item.value
    has_geo = bool(lb.region_pools or lb.country_pools or lb.pop_pools)
    where = item.at("steering_policy")
    if lb.steering_policy == "geo" and not has_geo:
        message = (
            "geo steering without region_pools, country_pools or pop_pools: default_pools only"
        )
        report.warn(where, message)
    elif has_geo and lb.effective_policy != "geo":
        message = f"geo mappings (region_pools, ...) are unused by {lb.effective_policy} steering"
        report.warn(where, message)
    if lb.effective_policy == "proximity":
        missing = [p.name for p in used if p is not None and p.latitude is None]
        if missing:
            message = f"proximity steering needs pool coordinates; missing on {', '.join(missing)}"
            report.warn(where, message)


def _check_dns_only(item: Item[LoadBalancer], used: list[Pool | None], report: Report) -> None:
    """R50: tunnel endpoints are reachable only through a proxied load balancer."""
    for pool in used:
        if pool is not None and any(o.tunnel_id for o in pool.origins):
            message = (
                f'pool "{pool.name}" has tunnel endpoints, which only a proxied load balancer '
                "can reach; set proxied: true (Cloudflare's default is false, DNS-only)"
            )
            report.error(item.at("proxied"), message)
    if item.value.affinity != "none":
        message = "session affinity is not applied by a DNS-only (proxied: false) load balancer"
        report.warn(item.at("session_affinity"), message)
