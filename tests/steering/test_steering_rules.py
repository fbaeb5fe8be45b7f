"""R32: custom rules run in priority order and override the load balancer per request."""

from __future__ import annotations

import random

import pytest
from builders import HOST, config, load_balancer, pool, request, router

from lb.config.model import AdaptiveRouting, FixedResponse, Rule, RuleOverrides
from steering import Affinity, Decision, Router


def ruled(*rules: Rule, **lb: object) -> Router:
    pools = [pool("a", 2), pool("b", 2), pool("c", 1)]
    return router(config(pools, load_balancer(["a", "c"], rules=rules, **lb)))


def to(pools: str, condition: str = "", **kw: object) -> Rule:
    return Rule(condition=condition, overrides=RuleOverrides(default_pools=tuple(pools)), **kw)


def decide(r: Router, seed: int = 1, *, trace: bool = False, **req: object) -> Decision:
    return r.decide(request(**req), random.Random(seed), trace=trace)


def test_r32_a_matching_rule_overrides_the_pools_for_that_request_only() -> None:
    r = ruled(to("b", 'http.request.uri.path matches "^/api/"'))
    for trace in (False, True):
        assert decide(r, uri="/api/v1?x=1", trace=trace).pool.name == "b"
        assert decide(r, uri="/home", trace=trace).pool.name == "a"
    traced = decide(r, uri="/api/x", trace=True)
    assert "rule 0: matched; overrides default_pools" in traced.trace


def test_r32_empty_condition_is_true_and_disabled_rules_are_skipped() -> None:
    assert decide(ruled(to("b"))).pool.name == "b"
    assert decide(ruled(to("b", disabled=True))).pool.name == "a"


def test_r32_priority_orders_rules_and_later_overrides_win_per_field() -> None:
    first = Rule(priority=1, overrides=RuleOverrides(default_pools=("a", "b", "c")))
    second = Rule(priority=5, overrides=RuleOverrides(steering_policy="random"))
    last = to("b", priority=9)
    # List order is reversed on purpose: priority decides.
    r = ruled(last, second, first)
    d = decide(r, trace=True)
    assert [line.split(":")[0] for line in d.trace[:3]] == ["rule 2", "rule 1", "rule 0"]
    # default_pools from the last rule (b only; the first rule's a, b, c would mix), the
    # policy from the second.
    assert {decide(r, seed).pool.name for seed in range(20)} == {"b"}
    assert d.policy == "random/random"


def test_r32_ties_keep_list_order_and_terminates_stops() -> None:
    r = ruled(to("b", terminates=True), to("c"))
    assert decide(r).pool.name == "b"
    r = ruled(to("b"), to("c"))
    assert decide(r).pool.name == "c"


def test_r32_fixed_response_answers_and_stops() -> None:
    fixed = FixedResponse(status_code=503, content_type="text/plain", message_body="later")
    r = ruled(Rule(condition='http.request.method eq "POST"', fixed_response=fixed), to("b"))
    d = decide(r, method="POST", trace=True)
    assert (d.reason, d.status, d.fixed, d.endpoint) == ("fixed_response", 503, fixed, None)
    assert d.as_json()["fixed_response"] == {
        "status_code": 503,
        "content_type": "text/plain",
        "location": "",
        "message_body": "later",
    }
    assert decide(r, method="GET").pool.name == "b"


def test_r32_fields_of_the_request_and_the_load_balancer() -> None:
    r = ruled(
        to(
            "b",
            'ip.src in {198.51.100.0/24} and cf.load_balancer.region eq "WEU" '
            'and any(http.request.headers["x-env"][*] == "beta") '
            'and http.request.cookies["ab"][0] eq "1" and http.request.version eq "HTTP/1.1"',
        )
    )
    beta = {
        "client_ip": "198.51.100.7",
        "datacenter": "FRA",
        "headers": {"x-env": "beta"},
        "cookies": {"ab": "1"},
    }
    assert decide(r, **beta).pool.name == "b"
    for change in (
        {"client_ip": "203.0.113.1"},
        {"datacenter": "IAD"},
        {"headers": {}},
        {"cookies": {"ab": "2"}},
        {"version": "HTTP/1.0"},
    ):
        assert decide(r, **{**beta, **change}).pool.name == "a", change


def test_r32_overrides_reach_affinity_and_the_fast_path_stays_per_request() -> None:
    r = ruled(
        Rule(
            condition='starts_with(http.request.uri.path, "/app")',
            overrides=RuleOverrides(default_pools=("b",), session_affinity="cookie"),
        )
    )
    app = decide(r, uri="/app/x", wall=100.0)
    assert (app.pool.name, app.affinity) == ("b", Affinity.NEW) and app.set_cookie
    again = decide(r, uri="/app/y", cookie=app.set_cookie, wall=200.0)
    assert (again.affinity, again.endpoint) == (Affinity.HIT, app.endpoint)
    # Many untraced decisions (the fast path of the base plan) never leak the override.
    for seed in range(30):
        assert decide(r, seed, uri="/other").pool.name == "a"
        assert decide(r, seed, uri="/app").pool.name == "b"


def test_r32_retry_across_pools_follows_the_overridden_order() -> None:
    rule = Rule(
        condition='http.host eq "app.example.com"',
        overrides=RuleOverrides(default_pools=("b", "c")),
    )
    pools = [pool("a", 2), pool("b", 1), pool("c", 1)]
    lb = load_balancer(
        ["a"], rules=(rule,), adaptive_routing=AdaptiveRouting(failover_across_pools=True)
    )
    r = router(config(pools, lb))
    first = decide(r)
    assert first.pool.name == "b"
    retry = r.retry(first, request(), random.Random(2), status=522)
    assert retry is not None and retry.pool.name == "c"


@pytest.mark.parametrize("fixed", [True, False])
def test_r32_unknown_host_is_unaffected(fixed: bool) -> None:
    rule = Rule(fixed_response=FixedResponse(status_code=418)) if fixed else to("b")
    d = decide(ruled(rule), host="other.example.com")
    assert (d.reason, d.status) == ("unknown_host", 404)


def test_r32_plans_per_matched_set_are_bounded() -> None:
    """Rules on request fields can match in 2**n combinations: the cache stays bounded."""
    rules = tuple(to("b", f'any(http.request.uri.args["k{i}"][*] == "1")') for i in range(13))
    r = ruled(*rules)
    for mask in range(1 << 13):
        query = "&".join(f"k{i}=1" for i in range(13) if mask >> i & 1)
        assert decide(r, uri=f"/?{query}").pool.name == ("b" if mask else "a")
    plan = r._plans[HOST]
    assert plan is not None and 0 < len(plan.ruled) <= 4096


@pytest.mark.parametrize(
    "uri", ["/admin/x", "//admin/x", "/%61dmin/x", "/a/../admin/x", "/%2e%2e/admin/x?q=1"]
)
def test_r32_rules_see_the_normalized_path(uri: str) -> None:
    """Cloudflare's URL normalization runs before the rules (steering/urls.py): every
    spelling of /admin matches, in the proxy, explain and the simulator alike."""
    r = ruled(to("b", 'starts_with(http.request.uri.path, "/admin")'))
    assert decide(r, uri=uri).pool.name == "b"


def test_r32_raw_fields_see_the_target_as_sent() -> None:
    r = ruled(
        to("b", 'raw.http.request.uri.path eq "//admin/x" and http.request.uri eq "/admin/x"')
    )
    assert decide(r, uri="//admin/x").pool.name == "b"
    assert decide(r, uri="/admin/x").pool.name == "a"
    q = ruled(
        to("b", 'raw.http.request.uri.query eq "a=%61" and http.request.uri.query eq "a=%61"')
    )
    assert decide(q, uri="/%78?a=%61").pool.name == "b"
