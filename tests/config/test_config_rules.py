"""Validation rules, one table per rule: each case edits one line of a valid configuration.

Expected problems are exact (file, line, dotted path and message), so a change of wording is a
deliberate change of these tables.
"""

from __future__ import annotations

import pytest
from config_helpers import BASE, T1, T2, errors, load, warnings


def edit(*lines: tuple[int, str], extra: str = "") -> str:
    """BASE with the given 1-based lines replaced and ``extra`` appended (from line 8 on)."""
    out = BASE.splitlines()
    for number, text in lines:
        out[number - 1] = text
    return "\n".join(out) + "\n" + extra


def pool_a(origins: str, extra: str = "") -> tuple[int, str]:
    """Line 4 (pool ``a``) with the given origins list."""
    return 4, f"  - {{name: a, monitor: m{extra}, origins: [{origins}]}}"


def lb(extra: str) -> tuple[int, str]:
    """Line 7 (the load balancer) with extra fields."""
    return (
        7,
        "  - {name: app.example.com, "
        + ("" if "proxied" in extra else "proxied: true, ")
        + f"default_pools: [a, b], fallback_pool: b, {extra}}}",
    )


def monitor(fields: str) -> tuple[int, str]:
    """Line 2 (monitor ``m``) with the given fields."""
    return 2, f"  - {{id: m, {fields}}}"


TUNNEL = f"{T1}.cfargotunnel.com"
SAME_PORT_NOTE = "; a pool may use an address only once, whatever the port"


def test_base_is_valid() -> None:
    assert load(BASE).warnings == []


# --------------------------------------------------------------------------- R22


@pytest.mark.parametrize(
    ("origins", "expected"),
    [
        pytest.param(
            f"{{name: o1, address: {TUNNEL}}}, {{name: o2, address: {TUNNEL}, port: 8443}}",
            f'lb.yaml:4: pools[0].origins[1].address: duplicate tunnel "{TUNNEL}" '
            f"(first at lb.yaml:4){SAME_PORT_NOTE}",
            id="same-tunnel-other-port",
        ),
        pytest.param(
            f"{{name: o1, address: {TUNNEL}}}, {{name: o2, address: {TUNNEL.upper()[:36]}"
            ".CFARGOTUNNEL.COM.}",
            None,
            id="case-and-dot-differ",
        ),
        pytest.param(
            "{name: o1, address: Origin.Example.com}, {name: o2, address: origin.example.com}",
            'lb.yaml:4: pools[0].origins[1].address: duplicate address "origin.example.com" '
            f"(first at lb.yaml:4){SAME_PORT_NOTE}",
            id="hostname-case-insensitive",
        ),
    ],
)
def test_r22_duplicate_tunnel_uuid_rejected(origins: str, expected: str | None) -> None:
    found = errors(edit(pool_a(origins)))
    if expected is None:  # an upper-case UUID is also an R46 error; R22 must still fire
        assert any("duplicate tunnel" in e for e in found), found
    else:
        assert found == [expected]


def test_r22_same_address_in_two_pools_is_fine() -> None:
    load(edit(pool_a("{name: o1, address: 10.0.0.2}")))


def test_duplicate_endpoint_names_rejected() -> None:
    text = edit(pool_a("{name: o1, address: 10.0.0.1}, {name: o1, address: 10.0.0.3}"))
    assert errors(text) == [
        'lb.yaml:4: pools[0].origins[1].name: duplicate endpoint name "o1" (first at lb.yaml:4)'
    ]


# --------------------------------------------------------------------------- R23


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            (5, '  - {id: b, name: "b.b", monitor: m, origins: [{name: o1, address: 10.0.0.2}]}'),
            'lb.yaml:5: pools[1].name: pool names may only contain A-Z, a-z, 0-9, "_" and "-", '
            'got "b.b"',
            id="name-with-dot",
        ),
        pytest.param(
            pool_a("{name: o1, address: 10.0.0.1}", ", latitude: 50.1"),
            "lb.yaml:4: pools[0].latitude: latitude and longitude must be set together",
            id="latitude-alone",
        ),
        pytest.param(
            pool_a("{name: o1, address: 10.0.0.1}", ", longitude: 8.7"),
            "lb.yaml:4: pools[0].longitude: latitude and longitude must be set together",
            id="longitude-alone",
        ),
    ],
)
def test_r23_pool_name_and_coordinates(line: tuple[int, str], expected: str) -> None:
    assert errors(edit(line)) == [expected]


def test_r23_datacenter_coordinates_set_together() -> None:
    text = edit(extra="datacenters:\n  XYZ: {region: WEU, latitude: 1.5}\n")
    assert errors(text) == [
        "lb.yaml:9: datacenters.XYZ.latitude: latitude and longitude must be set together"
    ]


def test_r23_pool_name_with_dash_and_underscore_is_fine() -> None:
    load(edit((5, "  - {id: b, name: B_b-1, origins: [{name: o1, address: 10.0.0.2}]}")))


# --------------------------------------------------------------------------- R41

R41_ERRORS = [
    pytest.param(
        "session_affinity: cookie, session_affinity_ttl: 1799",
        "lb.yaml:7: load_balancers[0].session_affinity_ttl: "
        "must be between 1800 and 604800 for cookie affinity, got 1799",
        id="cookie-ttl-low",
    ),
    pytest.param(
        "session_affinity: ip_cookie, session_affinity_ttl: 604801",
        "lb.yaml:7: load_balancers[0].session_affinity_ttl: "
        "must be between 1800 and 604800 for ip_cookie affinity, got 604801",
        id="ip-cookie-ttl-high",
    ),
    pytest.param(
        "session_affinity: header, session_affinity_ttl: 3601, "
        "session_affinity_attributes: {headers: [X-S]}",
        "lb.yaml:7: load_balancers[0].session_affinity_ttl: "
        "must be between 30 and 3600 for header affinity, got 3601",
        id="header-ttl-high",
    ),
    pytest.param(
        "session_affinity: cookie, session_affinity_attributes: {samesite: None, secure: Never}",
        "lb.yaml:7: load_balancers[0].session_affinity_attributes.samesite: "
        'samesite "None" needs secure "Auto" or "Always", not "Never"',
        id="samesite-none-secure-never",
    ),
    pytest.param(
        "session_affinity: header",
        "lb.yaml:7: load_balancers[0].session_affinity_attributes.headers: "
        "header affinity needs at least one header name",
        id="header-without-headers",
    ),
    pytest.param(
        "session_affinity: header, "
        "session_affinity_attributes: {headers: [X-S], zero_downtime_failover: sticky}",
        "lb.yaml:7: load_balancers[0].session_affinity_attributes.zero_downtime_failover: "
        '"sticky" is not supported with header affinity',
        id="header-sticky",
    ),
]


@pytest.mark.parametrize(("fields", "expected"), R41_ERRORS)
def test_r41_session_affinity_rejected(fields: str, expected: str) -> None:
    assert errors(edit(lb(fields))) == [expected]


@pytest.mark.parametrize(
    "fields",
    [
        "session_affinity: cookie, session_affinity_ttl: 1800",
        "session_affinity: ip_cookie, session_affinity_ttl: 604800",
        "session_affinity: header, session_affinity_ttl: 30, "
        "session_affinity_attributes: {headers: [cookie]}",
        "session_affinity: none, session_affinity_ttl: 5",
        "session_affinity: cookie, "
        "session_affinity_attributes: {samesite: None, secure: Always, "
        "zero_downtime_failover: sticky}",
    ],
)
def test_r41_session_affinity_accepted(fields: str) -> None:
    load(edit(lb(fields)))


# --------------------------------------------------------------------------- R46, R49, R50


@pytest.mark.parametrize(
    "address",
    [
        "not-a-uuid.cfargotunnel.com",
        f"{T1.upper()}.cfargotunnel.com",
        f"{T1.replace('-', '')}.cfargotunnel.com",
        f"x.{T1}.cfargotunnel.com",
    ],
)
def test_r46_malformed_tunnel_address_rejected(address: str) -> None:
    assert errors(edit(pool_a(f"{{name: o1, address: {address}}}"))) == [
        "lb.yaml:4: pools[0].origins[0].address: tunnel addresses are "
        f'"<lowercase uuid>.cfargotunnel.com", got "{address}"'
    ]


def test_r49_tcp_monitor_on_tunnel_pool_rejected() -> None:
    text = edit(monitor("type: tcp, port: 443"), pool_a(f"{{name: o1, address: {TUNNEL}}}"))
    assert errors(text) == [
        "lb.yaml:4: pools[0].monitor: a tcp monitor cannot check tunnel endpoints; "
        "use an https monitor with a Host header"
    ]


def test_r49_tcp_monitor_on_plain_pool_is_fine() -> None:
    load(edit(monitor("type: tcp, port: 443")))


def test_r50_tunnel_endpoint_on_dns_only_lb_rejected() -> None:
    text = edit(pool_a(f"{{name: o1, address: {TUNNEL}}}"), lb("proxied: false"))
    assert errors(text) == [
        'lb.yaml:7: load_balancers[0].proxied: pool "a" has tunnel endpoints, which only a '
        "proxied load balancer can reach; set proxied: true (Cloudflare's default is false, "
        "DNS-only)"
    ]


def test_r50_checks_pools_reached_only_through_geo_mappings() -> None:
    text = edit(
        (5, f"  - {{name: b, origins: [{{name: o1, address: {TUNNEL}}}]}}"),
        (7, "  - {name: x.example.com, proxied: false, default_pools: [a], fallback_pool: a, "),
        extra="      region_pools: {WEU: [b]}}\n",
    )
    assert errors(text) == [
        'lb.yaml:7: load_balancers[0].proxied: pool "b" has tunnel endpoints, which only a '
        "proxied load balancer can reach; set proxied: true (Cloudflare's default is false, "
        "DNS-only)"
    ]


# --------------------------------------------------------------------------- monitors, R9


def test_r9_warning_when_interval_not_longer_than_retries_times_timeout() -> None:
    text = edit(monitor("type: https, interval: 15, timeout: 5, retries: 2"))
    assert warnings(text) == [
        "lb.yaml:2: monitors[0].interval: interval 15 is not longer than "
        "(retries + 1) * timeout = 15; a check may still be retrying when the next one starts"
    ]


def test_r9_no_warning_when_interval_is_longer() -> None:
    assert warnings(edit(monitor("interval: 16, timeout: 5, retries: 2"))) == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            "interval: 5, timeout: 1",
            "lb.yaml:2: monitors[0].interval: must be at least engine.minimum_interval (10), got 5",
            id="below-plan-minimum",
        ),
        pytest.param(
            "expected_codes: '600'",
            'lb.yaml:2: monitors[0].expected_codes: must be a status code like "200", a class '
            'like "2xx", or a comma-separated list of them like "200,302", got "600"',
            id="code-out-of-range",
        ),
        pytest.param(
            "expected_codes: 2x",
            'lb.yaml:2: monitors[0].expected_codes: must be a status code like "200", a class '
            'like "2xx", or a comma-separated list of them like "200,302", got "2x"',
            id="code-too-short",
        ),
        pytest.param(
            "type: tcp",
            "lb.yaml:2: monitors[0].port: a tcp monitor needs a port",
            id="tcp-without-port",
        ),
    ],
)
def test_monitor_rules(fields: str, expected: str) -> None:
    assert errors(edit(monitor(fields))) == [expected]


def test_minimum_interval_is_configurable() -> None:
    load(edit(monitor("interval: 5, timeout: 1"), extra="engine: {minimum_interval: 5}\n"))


def test_expected_codes_upper_case_class_is_normalised() -> None:
    config = load(edit(monitor("expected_codes: 2XX"))).config
    assert config.monitor("m").expected_codes == "2xx"


def test_user_agent_header_warns() -> None:
    text = edit(monitor("header: {User-Agent: probe}"))
    assert warnings(text) == [
        "lb.yaml:2: monitors[0].header.User-Agent: the probe User-Agent cannot be overridden; "
        "this header is ignored"
    ]


def test_tunnel_probe_without_any_host_warns() -> None:
    text = edit(monitor("type: https"), pool_a(f"{{name: o1, address: {TUNNEL}}}"))
    assert warnings(text) == [
        "lb.yaml:4: pools[0].origins[0].address: probes to this tunnel carry no Host header, "
        "so cloudflared answers from its catch-all rule; set header.Host here or on the monitor"
    ]


def test_tunnel_probe_with_endpoint_host_does_not_warn() -> None:
    origin = f"{{name: o1, address: {TUNNEL}, header: {{Host: app.example.com}}}}"
    assert warnings(edit(monitor("type: https"), pool_a(origin))) == []


# --------------------------------------------------------------------------- pools


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            (4, "  - {name: a, monitor: mm, origins: [{name: o1, address: 10.0.0.1}]}"),
            'lb.yaml:4: pools[0].monitor: unknown monitor "mm" (did you mean "m"?)',
            id="unknown-monitor",
        ),
        pytest.param(
            (4, "  - {name: a, origins: []}"),
            "lb.yaml:4: pools[0].origins: a pool needs at least one endpoint",
            id="no-origins",
        ),
        pytest.param(
            pool_a("{name: o1, address: 10.0.0.1}", ", monitor_group: g"),
            "lb.yaml:4: pools[0].monitor_group: a pool takes either `monitor` or "
            "`monitor_group`, not both",
            id="monitor-and-monitor-group",
        ),
        pytest.param(
            pool_a("{name: o1, address: 10.0.0.1, header: {X-A: b}}"),
            'lb.yaml:4: pools[0].origins[0].header.X-A: only "Host" can be set on an endpoint',
            id="origin-header-not-host",
        ),
        pytest.param(
            pool_a("{name: o1, address: 10.0.0.1, header: {Host: [a, b]}}"),
            "lb.yaml:4: pools[0].origins[0].header.Host: Host takes exactly one value, got 2",
            id="origin-host-two-values",
        ),
        pytest.param(
            pool_a("{name: o1, address: ''}"),
            "lb.yaml:4: pools[0].origins[0].address: must not be empty",
            id="empty-address",
        ),
        pytest.param(
            (5, "  - {id: a, name: b, origins: [{name: o1, address: 10.0.0.2}]}"),
            'lb.yaml:5: pools[1].id: duplicate pool id "a" (first at lb.yaml:4)',
            id="id-clashes-with-other-name",
        ),
    ],
)
def test_pool_rules(line: tuple[int, str], expected: str) -> None:
    assert errors(edit(line)) == [expected]


def test_duplicate_pool_names_rejected() -> None:
    text = edit(
        (5, "  - {name: a, origins: [{name: o1, address: 10.0.0.2}]}"),
        (7, "  - {name: app.example.com, proxied: true, default_pools: [a], fallback_pool: a}"),
    )
    assert errors(text) == [
        'lb.yaml:5: pools[1].name: duplicate pool name "a" (first at lb.yaml:4)'
    ]


def test_minimum_origins_above_endpoint_count_warns() -> None:
    text = edit(pool_a("{name: o1, address: 10.0.0.1}", ", minimum_origins: 2"))
    assert warnings(text) == [
        "lb.yaml:4: pools[0].minimum_origins: 2 healthy endpoints needed but the pool has 1: "
        "it can never be healthy"
    ]


# --------------------------------------------------------------------------- load balancers


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            "region_pools: {WEU: [c]}",
            'lb.yaml:7: load_balancers[0].region_pools.WEU[0]: unknown pool "c"',
            id="unknown-pool-in-region-pools",
        ),
        pytest.param(
            "region_pools: {EUW: [a]}",
            'lb.yaml:7: load_balancers[0].region_pools.EUW: unknown region "EUW" '
            '(did you mean "WEU"?)',
            id="unknown-region",
        ),
        pytest.param(
            "country_pools: {de: [a]}",
            "lb.yaml:7: load_balancers[0].country_pools.de: must be a two-letter upper-case "
            'country code such as "US", got "de"',
            id="lower-case-country",
        ),
        pytest.param(
            "random_steering: {pool_weights: {aa: 0.5}}",
            'lb.yaml:7: load_balancers[0].random_steering.pool_weights.aa: unknown pool "aa" '
            '(did you mean "a"?)',
            id="unknown-pool-weight",
        ),
        pytest.param(
            """rules: [{name: r1, condition: 'http.request.path eq "/"'}]""",
            'lb.yaml:7: load_balancers[0].rules[0].condition: unknown field "http.request.path" '
            '(did you mean "http.request.uri.path"?) (column 1)',
            id="r32-condition-does-not-compile",
        ),
        pytest.param(
            "rules: [{overrides: {default_pools: [b], fallback_pool: zz}}]",
            'lb.yaml:7: load_balancers[0].rules[0].overrides.fallback_pool: unknown pool "zz"',
            id="r32-unknown-pool-in-overrides",
        ),
        pytest.param(
            """rules: [{fixed_response: {status_code: 302, location: "/a\\nb"}}]""",
            "lb.yaml:7: load_balancers[0].rules[0].fixed_response.location: must not contain "
            "control characters (a header value)",
            id="r32-fixed-response-header",
        ),
        pytest.param(
            "pool_sets: [{name: s1}]",
            "lb.yaml:7: load_balancers[0].pool_sets[0]: a pool set needs overrides.pools or a "
            "fixed_response (POOL_SET_NO_INTENT)",
            id="r31-no-intent",
        ),
        pytest.param(
            "pool_sets: [{match: {topology: {regions: [EUW]}}, overrides: {pools: [b]}}]",
            "lb.yaml:7: load_balancers[0].pool_sets[0].match.topology.regions[0]: unknown region "
            '"EUW" (did you mean "WEU"?)',
            id="r31-unknown-region",
        ),
        pytest.param(
            "pool_sets: [{overrides: {pools: [b], pool_weights: {zz: 1}}}]",
            "lb.yaml:7: load_balancers[0].pool_sets[0].overrides.pool_weights.zz: "
            'unknown pool "zz"',
            id="r31-unknown-pool",
        ),
    ],
)
def test_load_balancer_rules(fields: str, expected: str) -> None:
    assert errors(edit(lb(fields))) == [expected]


def test_unknown_default_and_fallback_pools_rejected() -> None:
    line = "  - {name: app.example.com, proxied: true, default_pools: [a, x, a], fallback_pool: bb}"
    assert errors(edit((7, line))) == [
        'lb.yaml:7: load_balancers[0].default_pools[1]: unknown pool "x"',
        'lb.yaml:7: load_balancers[0].default_pools[2]: duplicate pool in this list "a" '
        "(first at lb.yaml:7)",
        'lb.yaml:7: load_balancers[0].fallback_pool: unknown pool "bb" (did you mean "b"?)',
    ]


def test_empty_default_pools_rejected() -> None:
    line = "  - {name: app.example.com, proxied: true, default_pools: [], fallback_pool: b}"
    assert errors(edit((7, line))) == [
        "lb.yaml:7: load_balancers[0].default_pools: must list at least one pool"
    ]


def test_load_balancer_names_are_case_insensitive() -> None:
    text = (
        BASE + "  - {name: APP.example.com, proxied: true, default_pools: [a], fallback_pool: a}\n"
    )
    assert errors(text) == [
        'lb.yaml:8: load_balancers[1].name: duplicate load balancer name "APP.example.com" '
        "(first at lb.yaml:7)"
    ]


@pytest.mark.parametrize("name", ["-app.example.com", "app..example.com", "app example.com"])
def test_a_load_balancer_name_must_be_a_host_name(name: str) -> None:
    line = f"  - {{name: '{name}', proxied: true, default_pools: [a], fallback_pool: a}}"
    assert errors(edit((7, line))) == [
        f'lb.yaml:7: load_balancers[0].name: "{name}" is not a host name: no request could reach it'
    ]


@pytest.mark.parametrize("value", ["[]", "null"])
def test_empty_rules_and_pool_sets_are_fine(value: str) -> None:
    load(edit(lb(f"rules: {value}, pool_sets: {value}")))


def test_geo_without_mappings_warns() -> None:
    assert warnings(edit(lb("steering_policy: geo"))) == [
        "lb.yaml:7: load_balancers[0].steering_policy: geo steering without region_pools, "
        "country_pools or pop_pools: default_pools only"
    ]


def test_geo_mappings_under_other_policy_warn() -> None:
    assert warnings(edit(lb("steering_policy: random, region_pools: {WEU: [a]}"))) == [
        "lb.yaml:7: load_balancers[0].steering_policy: geo mappings (region_pools, ...) are "
        "unused by random steering"
    ]


def test_proximity_with_pools_lacking_coordinates_warns() -> None:
    text = edit(
        pool_a("{name: o1, address: 10.0.0.1}", ", latitude: 50.1, longitude: 8.7"),
        lb("steering_policy: proximity"),
    )
    assert warnings(text) == [
        "lb.yaml:7: load_balancers[0].steering_policy: proximity steering needs pool "
        "coordinates; missing on b"
    ]


def test_affinity_on_dns_only_lb_warns() -> None:
    assert warnings(edit(lb("proxied: false, session_affinity: cookie"))) == [
        "lb.yaml:7: load_balancers[0].session_affinity: session affinity is not applied by a "
        "DNS-only (proxied: false) load balancer"
    ]


# --------------------------------------------------------------------------- our sections

SECTION_ERRORS = [
    pytest.param(
        "engine: {datacenter: FRAX}",
        'lb.yaml:8: engine.datacenter: unknown data center "FRAX" (did you mean "FRA"?); '
        "add it under `datacenters`",
        id="engine-datacenter",
    ),
    pytest.param(
        "engine: {vantage_points: []}",
        "lb.yaml:8: engine.vantage_points: needs at least one vantage point",
        id="no-vantage-points",
    ),
    pytest.param(
        "engine: {vantage_points: [a, b, a]}",
        'lb.yaml:8: engine.vantage_points[2]: duplicate vantage point "a" (first at lb.yaml:8)',
        id="duplicate-vantage-point",
    ),
    pytest.param(
        "engine: {trusted_proxies: [10.0.0.0/33]}",
        "lb.yaml:8: engine.trusted_proxies[0]: not a network address: "
        "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network",
        id="bad-cidr",
    ),
    pytest.param(
        "engine: {admin: localhost}",
        'lb.yaml:8: engine.admin: expected "host:port", got "localhost"',
        id="admin-without-port",
    ),
    pytest.param(
        "engine: {listen: [{port: 8443, certificate: cert.pem}]}",
        "lb.yaml:8: engine.listen[0]: certificate and key must be set together",
        id="certificate-without-key",
    ),
    pytest.param(
        "connect_to: {'::1:443': '127.0.0.1:1'}",
        'lb.yaml:8: connect_to["::1:443"]: key: IPv6 addresses need brackets, e.g. "[::1]:443"',
        id="connect-to-unbracketed-ipv6",
    ),
    pytest.param(
        "connect_to: {'a.example.com:443': '127.0.0.1'}",
        'lb.yaml:8: connect_to["a.example.com:443"]: expected "host:port", got "127.0.0.1"',
        id="connect-to-target-without-port",
    ),
    pytest.param(
        "connect_to: {'a.example.com:443': '127.0.0.1:70000'}",
        'lb.yaml:8: connect_to["a.example.com:443"]: port must be a number between 0 and '
        '65535, got "70000"',
        id="connect-to-port-too-big",
    ),
    pytest.param(
        "tunnels: {6FF42AE2-765D-4ADF-8112-31C55C1551EF: {name: t}}",
        "lb.yaml:8: tunnels.6FF42AE2-765D-4ADF-8112-31C55C1551EF: tunnel ids are lowercase "
        f'UUIDs such as "{T1}", got "6FF42AE2-765D-4ADF-8112-31C55C1551EF"',
        id="tunnel-key-upper-case",
    ),
    pytest.param(
        f"tunnels: {{{T1}: {{replicas: [{{name: r1, datacenters: [FRA, XXX]}}]}}}}",
        f'lb.yaml:8: tunnels.{T1}.replicas[0].datacenters[1]: unknown data center "XXX"; '
        "add it under `datacenters`",
        id="replica-datacenter-unknown",
    ),
    pytest.param(
        "datacenters: {XYZ: {region: EU}}",
        'lb.yaml:8: datacenters.XYZ.region: must be one of "WNAM", "ENAM", "WEU", "EEU", '
        '"NSAM", "SSAM", "OC", "ME", "NAF", "SAF", "SAS", "SEAS", "NEAS"; got "EU" '
        '(did you mean "WEU"?)',
        id="datacenter-region",
    ),
    pytest.param(
        "datacenters: {xyz: {region: WEU, country: Germany}}",
        "lb.yaml:8: datacenters.xyz: data center codes are upper-case letters and digits",
        id="datacenter-code-lower-case",
    ),
]


@pytest.mark.parametrize(("extra", "expected"), SECTION_ERRORS)
def test_section_rules(extra: str, expected: str) -> None:
    found = errors(edit(extra=extra + "\n"))
    assert found[0] == expected, found


@pytest.mark.parametrize(
    "extra",
    [
        "connect_to: {'[::1]:443': '127.0.0.1:18443', 'a.example.com:443': '[::1]:18444'}",
        "engine: {trusted_proxies: [127.0.0.0/8, '::1/128'], admin: '[::1]:0'}",
        f"tunnels: {{{T1}: {{name: t, replicas: [{{name: r1, datacenters: [FRA, AMS]}}]}}}}",
        "datacenters: {FRA: {region: EEU}, X1: {region: OC, latitude: 1, longitude: 2}}",
    ],
)
def test_sections_accepted(extra: str) -> None:
    load(edit(extra=extra + "\n"))


def test_connect_to_keys_are_lower_cased() -> None:
    config = load(edit(extra="connect_to: {'A.Example.com:443': '127.0.0.1:1'}\n")).config
    assert config.connect_to == {"a.example.com:443": "127.0.0.1:1"}


def test_all_problems_are_reported_at_once() -> None:
    text = edit(
        monitor("interval: 5, timeout: 1"),
        pool_a(f"{{name: o1, address: {TUNNEL}}}, {{name: o2, address: {TUNNEL}}}"),
        lb("session_affinity: cookie, session_affinity_ttl: 1, rules: [{condition: x}]"),
        extra=f"tunnels: {{{T2.upper()}: {{}}}}\n",
    )
    assert [e.split(": ")[1] for e in errors(text)] == [
        "monitors[0].interval",
        "pools[0].origins[1].address",
        "load_balancers[0].session_affinity_ttl",
        "load_balancers[0].rules[0].condition",
        f"tunnels.{T2.upper()}",
    ]
