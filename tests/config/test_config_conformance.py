"""Issue 15, Cloudflare conformance: what the configuration checks accept and refuse.

Each test is named by the item of the issue it covers; docs/semantics.md records the
decisions and the Cloudflare sources they follow.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from config_helpers import BASE, errors, load, warnings

from lb.cli import main
from lb.config.errors import ConfigError
from lb.config.loader import load_config_text

LB = "  - {name: app.example.com, proxied: true, default_pools: [a, b], fallback_pool: b}\n"


def with_lb(extra: str) -> str:
    """BASE with the load balancer's flow mapping extended by ``extra`` (YAML, no braces)."""
    return BASE.replace(LB, LB[:-2] + f", {extra}}}\n")


def pool_sets(*sets: str) -> str:
    return with_lb(f"pool_sets: [{', '.join(sets)}]")


# ----------------------------------------------------------------------- item 2: pool sets


@pytest.mark.parametrize(
    ("pool_set", "message"),
    [
        ("{match: {topology: {}}, overrides: {pools: [a]}}", "POOL_SET_EMPTY_TOPOLOGY"),
        (
            "{match: {default: true, topology: {pops: [FRA]}}, overrides: {pools: [a]}}",
            "POOL_SET_DEFAULT_WITH_MATCH",
        ),
        ("{match: {}, overrides: {pools: [a]}}", "POOL_SET_EMPTY_MATCH"),
        ("{match: {default: true}}", "POOL_SET_NO_INTENT"),
        (
            "{overrides: {pools: [a]}, fixed_response: {status_code: 403}}",
            "overrides.pools and fixed_response are mutually exclusive",
        ),
        (
            "{match: {topology: {pops: [FRA, FRA]}}, overrides: {pools: [a]}}",
            'duplicate entry of pops "FRA"',
        ),
        (
            "{match: {topology: {countries: [DE, DE]}}, overrides: {pools: [a]}}",
            'duplicate entry of countries "DE"',
        ),
        (f"{{name: {'n' * 201}, overrides: {{pools: [a]}}}}", "must be at most 200 characters"),
    ],
)
def test_item_02_invalid_pool_sets_are_errors_with_cloudflares_code(
    pool_set: str, message: str
) -> None:
    problems = errors(pool_sets(pool_set))
    assert len(problems) == 1 and message in problems[0], problems


def test_item_02_pool_set_limits() -> None:
    many = ", ".join(["{overrides: {pools: [a]}}"] * 1001)
    assert any("POOL_SETS_TOO_LARGE" in p for p in errors(pool_sets(many)))
    regions = ", ".join(["WEU"] * 1001)
    big = f"{{match: {{topology: {{regions: [{regions}]}}}}, overrides: {{pools: [a]}}}}"
    assert any("POOL_SET_TOPOLOGY_TOO_LARGE" in p for p in errors(pool_sets(big)))


def test_item_02_valid_pool_sets_still_load() -> None:
    load(
        pool_sets(
            "{match: {topology: {regions: [WEU], countries: [DE]}}, overrides: {pools: [a]}}",
            "{match: {default: true}, overrides: {pools: [b]}}",
            "{overrides: {pools: [b]}}",
        )
    )


# ----------------------------------------------------------------------- item 6: set policies


@pytest.mark.parametrize("policy", ["geo", '""'])
def test_item_06_pool_sets_reject_policies_cloudflare_does_not_list(policy: str) -> None:
    (problem,) = errors(pool_sets(f"{{overrides: {{pools: [a], steering_policy: {policy}}}}}"))
    assert "pool_sets[0].overrides.steering_policy" in problem
    assert '"off", "random", "dynamic_latency", "proximity"' in problem


@pytest.mark.parametrize(
    "policy",
    ["off", "random", "dynamic_latency", "proximity", "least_outstanding_requests",
     "least_connections"],
)  # fmt: skip
def test_item_06_pool_sets_accept_the_listed_policies(policy: str) -> None:
    load(pool_sets(f"{{overrides: {{pools: [a], steering_policy: {policy}}}}}"))


# ----------------------------------------------------------------------- item 7: rule pools


def test_item_07_rule_overrides_accept_pools_and_pool_weights() -> None:
    result = load(
        with_lb(
            'rules: [{condition: "http.host eq \\"x\\"", overrides: {pools: [b], '
            "pool_weights: {a: 0.2}, pool_default_weight: 0.5, steering_policy: random}}]"
        )
    )
    o = result.config.load_balancers[0].rules[0].overrides
    assert (o.pools, dict(o.pool_weights or {}), o.pool_default_weight) == (("b",), {"a": 0.2}, 0.5)


def test_item_07_rule_override_pool_references_are_checked() -> None:
    (problem,) = errors(with_lb("rules: [{overrides: {pools: [zz]}}]"))
    assert 'rules[0].overrides.pools[0]: unknown pool "zz"' in problem
    (problem,) = errors(with_lb("rules: [{overrides: {pool_weights: {zz: 1}}}]"))
    assert 'unknown pool "zz"' in problem


def test_item_07_rule_override_exclusions_follow_the_schema() -> None:
    (problem,) = errors(
        with_lb("rules: [{overrides: {pools: [a]}, fixed_response: {status_code: 403}}]")
    )
    assert "overrides.pools and fixed_response are mutually exclusive" in problem
    (problem,) = errors(
        with_lb(
            "rules: [{overrides: {pool_weights: {a: 1}, random_steering: {default_weight: 1}}}]"
        )
    )
    assert "pool_weights and random_steering are mutually exclusive" in problem


# ----------------------------------------------------------------------- item 5: merged affinity


@pytest.mark.parametrize(
    ("overrides", "where", "message"),
    [
        (
            "{session_affinity: header, session_affinity_ttl: 5, "
            "session_affinity_attributes: {headers: [x-user]}}",
            "rules[0].overrides.session_affinity_ttl",
            "must be between 30 and 3600 for header affinity, got 5",
        ),
        (
            "{session_affinity: header, session_affinity_attributes: "
            "{headers: [x-user], zero_downtime_failover: sticky}}",
            "rules[0].overrides.session_affinity_attributes.zero_downtime_failover",
            '"sticky" is not supported with header affinity',
        ),
        (
            "{session_affinity: cookie, session_affinity_attributes: "
            "{samesite: None, secure: Never}}",
            "rules[0].overrides.session_affinity_attributes.samesite",
            'samesite "None" needs secure',
        ),
        (
            "{session_affinity: header}",
            "rules[0].overrides.session_affinity",
            "header affinity needs at least one header name",
        ),
    ],
)
def test_item_05_rule_overrides_are_checked_as_merged_into_the_load_balancer(
    overrides: str, where: str, message: str
) -> None:
    (problem,) = errors(with_lb(f"rules: [{{overrides: {overrides}}}]"))
    assert where in problem and message in problem, problem
    assert "with this rule's overrides" in problem


def test_item_05_a_rule_is_checked_with_the_load_balancers_own_settings() -> None:
    # The load balancer has header affinity with a TTL of 60; a rule that sets only the TTL
    # to 10 makes an invalid load balancer.
    lb = (
        "session_affinity: header, session_affinity_attributes: {headers: [x-user]}, "
        "rules: [{overrides: {session_affinity_ttl: 10}}]"
    )
    (problem,) = errors(with_lb(lb))
    assert "rules[0].overrides.session_affinity_ttl" in problem


# ----------------------------------------------------------------------- zero-downtime codes


def test_zero_downtime_failover_codes_reject_codes_that_can_never_fire() -> None:
    (problem,) = errors(BASE + "engine: {zero_downtime_failover_codes: [521, 503]}\n")
    assert "engine.zero_downtime_failover_codes[1]: 503 can never trigger a retry" in problem
    load(BASE + "engine: {zero_downtime_failover_codes: [521, 522, 523, 525, 526]}\n")


# ----------------------------------------------------------------------- regular expressions


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(a)\\\\\\\\1", "invalid escape sequence"),  # a backreference
        ("(?=a)", "invalid perl operator"),  # lookahead
        ("a{1001}", "invalid repetition size"),
    ],
)
def test_regex_patterns_re2_cannot_compile_are_load_errors(pattern: str, reason: str) -> None:
    condition = f'http.request.uri.path matches \\"{pattern}\\"'
    (problem,) = errors(with_lb(f'rules: [{{condition: "{condition}"}}]'))
    assert "bad regular expression" in problem and reason in problem, problem


# ----------------------------------------------------------------------- item 8: proxied


def test_item_08_proxied_defaults_to_false_as_in_cloudflares_api() -> None:
    plain = BASE.replace("proxied: true, ", "")
    assert load(plain).config.load_balancers[0].proxied is False
    tunnel = "6ff42ae2-765d-4adf-8112-31c55c1551ef.cfargotunnel.com"
    (problem,) = errors(plain.replace("address: 10.0.0.1", f"address: {tunnel}"))
    assert "set proxied: true (Cloudflare's default is false, DNS-only)" in problem


def test_item_08_a_proxied_that_is_not_a_boolean_is_one_error_not_its_knock_ons() -> None:
    tunnels = ["6ff42ae2-765d-4adf-8112-31c55c1551ef", "0f3e2d1c-4b5a-4c6d-8e7f-9a0b1c2d3e4f"]
    text = BASE.replace("address: 10.0.0.1", f"address: {tunnels[0]}.cfargotunnel.com")
    text = text.replace("address: 10.0.0.2", f"address: {tunnels[1]}.cfargotunnel.com")
    text = text.replace("proxied: true, ", "proxied: yes please, session_affinity: cookie, ")
    text = text.replace("}]}\n", ", header: {Host: [app.example.com]}}]}\n")
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    problems = [str(p) for p in info.value.problems + info.value.warnings]
    expected = 'load_balancers[0].proxied: expected true or false, got a string ("yes please")'
    assert problems == [f"config.yaml:7: {expected}"]


# ----------------------------------------------------------------------- item 9: whole seconds


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("timeout: 0.5", "monitors[0].timeout: must be between 1 and 10, got 0.5"),
        ("timeout: 11", "monitors[0].timeout: must be between 1 and 10, got 11"),
        ("timeout: 2.5", "monitors[0].timeout: must be a whole number of seconds"),
        ("interval: 60.5", "monitors[0].interval: must be a whole number of seconds"),
    ],
)
def test_item_09_interval_and_timeout_are_whole_seconds(fields: str, message: str) -> None:
    text = BASE.replace("interval: 60,", f"interval: 60, {fields},").replace(
        "interval: 60, interval: 60.5", "interval: 60.5"
    )
    (problem,) = errors(text)
    assert message in problem, problem


def test_item_09_integral_numbers_are_accepted() -> None:
    monitor = load(BASE.replace("interval: 60,", "interval: 60.0, timeout: 10.0,")).config
    assert (monitor.monitors[0].interval, monitor.monitors[0].timeout) == (60, 10)


# ----------------------------------------------------------------------- item 10: code lists


def test_item_10_expected_codes_accept_a_list() -> None:
    config = load(BASE.replace("type: https,", "type: https, expected_codes: '200, 3XX',")).config
    assert config.monitors[0].expected_codes == "200, 3xx"
    (problem,) = errors(BASE.replace("type: https,", "type: https, expected_codes: '200,',"))
    assert 'comma-separated list of them like "200,302", got "200,"' in problem


# ----------------------------------------------------------------------- item 11: extensions


@pytest.mark.parametrize(
    ("condition", "used"),
    [
        ('starts_with(http.request.uri.path, \\"/a\\")', "starts_with"),
        ('lower(http.user_agent) contains \\"bot\\"', "lower, http.user_agent"),
        ('http.request.cookies[\\"a\\"][0] eq \\"1\\"', "http.request.cookies"),
        ('any(http.request.headers.names[*] eq \\"x\\")', "http.request.headers.names"),
        ("len(http.x_forwarded_for) gt 0", "len, http.x_forwarded_for"),
    ],
)
def test_item_11_extensions_in_rule_conditions_warn(condition: str, used: str) -> None:
    (warning,) = warnings(with_lb(f'rules: [{{condition: "{condition}"}}]'))
    assert f"rules[0].condition: {used}: tunnel-lb extension, not accepted by Cloudflare" in (
        warning
    )


def test_item_11_cloudflare_fields_do_not_warn() -> None:
    condition = (
        'http.request.uri.path matches \\"^/api\\" and http.request.headers[\\"x\\"][0] eq \\"1\\"'
    )
    assert warnings(with_lb(f'rules: [{{condition: "{condition}"}}]')) == []


# ----------------------------------------------------------------------- item 12


def test_item_12_health_sources_are_unset_or_regional_and_global() -> None:
    load(BASE.replace("{name: a,", "{name: a, health_sources: [regional, global],"))
    (problem,) = errors(BASE.replace("{name: a,", "{name: a, health_sources: [regional],"))
    assert 'pools[0].health_sources: must be unset or ["regional", "global"]' in problem
    (problem,) = errors(BASE.replace("{name: a,", "{name: a, health_sources: [local],"))
    assert "pools[0].health_sources[0]: must be one of" in problem


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            BASE.replace("address: 10.0.0.1}", "address: 10.0.0.1, weight: 0.125}"),
            "pools[0].origins[0].weight: must be a multiple of 0.01",
        ),
        (
            with_lb("random_steering: {default_weight: 0.25}"),
            "random_steering.default_weight: must be a multiple of 0.1",
        ),
        (
            pool_sets("{overrides: {pools: [a], pool_default_weight: 0.55}}"),
            "pool_sets[0].overrides.pool_default_weight: must be a multiple of 0.1",
        ),
        (
            with_lb("rules: [{overrides: {pool_default_weight: 0.05}}]"),
            "rules[0].overrides.pool_default_weight: must be a multiple of 0.1",
        ),
    ],
)
def test_item_12_weights_follow_the_schemas_multiple_of(text: str, where: str) -> None:
    (problem,) = errors(text)
    assert where in problem, problem


def test_item_12_pool_weight_maps_have_no_step() -> None:
    load(with_lb("random_steering: {pool_weights: {a: 0.75, b: 0.25}, default_weight: 0.3}"))


# ----------------------------------------------------------------------- item 4: colos


def test_item_04_unknown_pops_warn_instead_of_failing() -> None:
    text = with_lb("pop_pools: {FRX: [a]}")
    (warning,) = warnings(text)
    assert 'load_balancers[0].pop_pools.FRX: data center "FRX" is not in the data center ' in (
        warning
    )
    assert "never matches" in warning
    (warning,) = warnings(pool_sets("{match: {topology: {pops: [ZZZ]}}, overrides: {pools: [a]}}"))
    assert "pool_sets[0].match.topology.pops[0]" in warning


def test_item_04_the_table_knows_more_colos() -> None:
    config = load(with_lb("pop_pools: {BNE: [a], CMH: [b]}")).config
    assert config.datacenters["BNE"].region == "OC"
    assert config.datacenters["CMH"].country == "US"
    assert len(config.datacenters) >= 200
    assert all(dc.latitude is not None for dc in config.datacenters.values())


# ----------------------------------------------------------------------- docs wording


def test_docs_monitor_method_defaults_to_get_and_tcp_to_connection_established() -> None:
    config = load(BASE).config
    assert (config.monitors[0].method, config.monitors[0].effective_method) == ("GET", "GET")
    tcp = load(BASE.replace("type: https,", "type: tcp, port: 443,")).config.monitors[0]
    assert tcp.effective_method == "connection_established"


def test_docs_a_host_only_on_the_monitor_warns_for_tunnel_endpoints() -> None:
    tunnel = "6ff42ae2-765d-4adf-8112-31c55c1551ef.cfargotunnel.com"
    text = BASE.replace("address: 10.0.0.1}", f"address: {tunnel}}}")
    text = text.replace("name: app.example.com,", "name: www.example.com,")
    (warning,) = warnings(text)
    assert "pools[0].origins[0].address: only the monitor sets a Host" in warning
    assert 'traffic through load balancer "www.example.com"' in warning
    on_endpoint = f"address: {tunnel}, header: {{Host: [app.example.com]}}}}"
    assert warnings(text.replace(f"address: {tunnel}}}", on_endpoint)) == []


def test_docs_a_host_only_on_the_monitor_is_fine_when_the_load_balancer_has_that_name() -> None:
    """Traffic carries the load balancer's hostname (R47): when it is the monitor's Host
    (case and port aside, R48), probes and traffic reach the same ingress rule."""
    tunnel = "6ff42ae2-765d-4adf-8112-31c55c1551ef.cfargotunnel.com"
    text = BASE.replace("address: 10.0.0.1}", f"address: {tunnel}}}")
    assert warnings(text) == []
    assert warnings(text.replace("Host: [app.example.com]", "Host: [App.Example.com:443]")) == []
    other = "  - {name: www.example.com, proxied: true, default_pools: [b, a], fallback_pool: b}\n"
    (warning,) = warnings(text + other)
    assert (
        'pools[0].origins[0].address: only the monitor sets a Host ("app.example.com")' in warning
    )


# ----------------------------------------------------------------------- proof: an export


def test_proof_check_passes_on_an_export_with_rule_pools_and_unlisted_colos(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Cloudflare API export (envelope) using rule ``overrides.pools``, pool weights, a
    pool set and colos outside the table: ``tunnel-lb check`` passes (warnings only)."""
    pool = {
        "id": "17b5962d775c646f3f9725cbc7a53df4",
        "name": "primary",
        "origins": [{"name": "a", "address": "192.0.2.1", "weight": 1}],
    }
    other = {**pool, "id": "9290f38c5d07c2e2f4df57b1f61d4196", "name": "secondary"}
    other["origins"] = [{"name": "b", "address": "192.0.2.2", "weight": 0.55}]
    lb = {
        "id": "699d98642c564d2e855e9661899b7252",
        "name": "www.example.com",
        "proxied": True,
        "default_pools": [pool["id"]],
        "fallback_pool": other["id"],
        "steering_policy": "geo",
        "pop_pools": {"BNE": [other["id"]], "QQQ": [pool["id"]]},
        "rules": [
            {
                "name": "beta",
                "condition": 'http.request.uri.path matches "^/beta"',
                "overrides": {
                    "pools": [other["id"]],
                    "pool_weights": {other["id"]: 0.5},
                    "pool_default_weight": 0.2,
                },
            }
        ],
        "pool_sets": [
            {
                "name": "apac",
                "match": {"topology": {"pops": ["CMH", "ZZZ"]}},
                "overrides": {"pools": [other["id"]], "steering_policy": "random"},
            }
        ],
    }
    path = tmp_path / "export.json"
    body = {"result": [pool, other, lb], "success": True, "errors": [], "messages": []}
    path.write_text(json.dumps(body))
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr()
    assert 'data center "QQQ" is not in the data center table' in out.out + out.err


def test_item_09_fractional_monitor_times_is_the_documented_escape() -> None:
    """Rehearsals scale monitor times down (``tunnel-lb rehearse --speed``): the engine may
    opt out of the whole-seconds rule, and only then."""
    text = BASE.replace("interval: 60,", "interval: 60, timeout: 0.2,")
    assert errors(text)
    escaped = text + "engine:\n  fractional_monitor_times: true\n"
    assert load(escaped).config.monitors[0].timeout == 0.2
