"""Metrics: counters fed by engine observers and hooks, gauges read at scrape time."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import pytest
from admin_builders import HEADER_HOST, HOST, VANTAGES, all_healthy, config, engine, key, probe
from admin_builders import samples as parse
from prometheus_client import CollectorRegistry, generate_latest

from lb.core.health import ProbeResult
from lb.engine import Engine
from lb.metrics import DURATION_BUCKETS, METRICS, LoadBalancerState, Metrics, load_balancer_state
from steering import Request

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def attached() -> tuple[Engine, Metrics]:
    eng = engine()
    metrics = Metrics(wall=lambda: 1_700_000_000.0)
    metrics.attach(eng)
    return eng, metrics


def scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse(generate_latest(metrics.registry))


def test_every_metric_is_exposed_with_help_and_type() -> None:
    _, metrics = attached()
    text = generate_latest(metrics.registry).decode()
    for spec in METRICS:
        family = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
        sample = spec.name
        assert f"# HELP {sample} {spec.help}" in text
        assert f"# TYPE {sample} {spec.kind}" in text, family
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))


def test_names_follow_prometheus_conventions() -> None:
    for spec in METRICS:
        assert re.fullmatch(r"lb_[a-z_]+", spec.name), spec.name
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        if spec.kind == "histogram":
            assert spec.name.endswith("_seconds"), spec.name
        assert not {"le", "quantile"} & set(spec.labels)
        assert spec.help.strip() and "\n" not in spec.help


def test_docs_list_every_metric_with_its_type_and_labels() -> None:
    text = DOCS.read_text()
    for spec in METRICS:
        row = next((line for line in text.splitlines() if f"`{spec.name}`" in line), None)
        assert row is not None, f"docs/metrics.md does not list {spec.name}"
        assert spec.kind in row, spec.name
        for label in spec.labels:
            assert f"`{label}`" in row, (spec.name, label)


def test_own_registry_and_instances_are_isolated() -> None:
    a, b = Metrics(), Metrics()
    assert a.registry is not b.registry
    a.retry(HOST, "522", "eu")
    assert key("lb_retries_total", load_balancer=HOST, pool="eu", reason="522") in scrape(a)
    assert key("lb_retries_total", load_balancer=HOST, pool="eu", reason="522") not in scrape(b)
    reg = CollectorRegistry()
    assert Metrics(reg).registry is reg
    with pytest.raises(ValueError, match="Duplicated"):
        Metrics(reg)


def test_probes_counted_by_result_and_reason() -> None:
    eng, metrics = attached()
    probe(eng, "eu", "a", ok=True, status=200, rtt=0.012)
    probe(eng, "eu", "b", ok=False, reason="TCP connection failed")
    probe(eng, "eu", "b", ok=False, reason="TCP connection failed", vantages=["FRA"])
    s = scrape(metrics)
    ok = {"pool": "eu", "endpoint": "a", "result": "success", "reason": ""}
    for v in VANTAGES:
        assert s[key("lb_probes_total", vantage=v, **ok)] == 1
    bad = {"pool": "eu", "endpoint": "b", "result": "failure", "reason": "TCP connection failed"}
    assert s[key("lb_probes_total", vantage="FRA", **bad)] == 2
    assert s[key("lb_probes_total", vantage="IAD", **bad)] == 1


def test_probe_duration_histogram_buckets() -> None:
    eng, metrics = attached()
    probe(eng, "eu", "a", ok=True, rtt=0.012, vantages=["FRA"])
    probe(eng, "eu", "a", ok=True, rtt=0.01, vantages=["IAD"])  # on a bound: le is inclusive
    probe(eng, "eu", "a", ok=True, rtt=120.0, vantages=["SIN"])
    probe(eng, "eu", "b", ok=False, reason="TCP timeout")  # no rtt: not observed
    probe(eng, "eu", "a", ok=True, rtt=0.02, vantages=["SIN"])
    s = scrape(metrics)
    bucket = "lb_probe_duration_seconds_bucket"

    def at(vantage: str, le: str) -> float:
        return s[key(bucket, le=le, pool="eu", endpoint="a", vantage=vantage)]

    assert [at("FRA", "0.005"), at("FRA", "0.01"), at("FRA", "0.025")] == [0, 0, 1]
    assert [at("IAD", "0.005"), at("IAD", "0.01")] == [0, 1]  # on a bound: le is inclusive
    assert [at("SIN", "0.025"), at("SIN", "60.0"), at("SIN", "+Inf")] == [1, 1, 2]
    sin = {"pool": "eu", "endpoint": "a", "vantage": "SIN"}
    assert s[key("lb_probe_duration_seconds_count", **sin)] == 2
    assert s[key("lb_probe_duration_seconds_sum", **sin)] == pytest.approx(120.02)
    assert not [k for k in s if k[0].startswith("lb_probe_duration") and ("endpoint", "b") in k[1]]
    buckets = [k for k in s if k[0] == bucket and ("vantage", "FRA") in k[1]]
    assert len(buckets) == len(DURATION_BUCKETS) + 1


def test_health_transitions_per_vantage_and_aggregate() -> None:
    eng, metrics = attached()
    probe(eng, "eu", "a", ok=True)
    probe(eng, "eu", "a", ok=True)  # no change, no transition
    probe(eng, "eu", "a", ok=False, vantages=["FRA"])  # 2 of 3 still healthy
    s = scrape(metrics)
    t = "lb_health_transitions_total"
    for v in VANTAGES:
        assert s[key(t, pool="eu", endpoint="a", vantage=v, to="healthy")] == 1
    assert s[key(t, pool="eu", endpoint="a", vantage="*", to="healthy")] == 1
    assert s[key(t, pool="eu", endpoint="a", vantage="FRA", to="unhealthy")] == 1
    assert key(t, pool="eu", endpoint="a", vantage="*", to="unhealthy") not in s
    probe(eng, "eu", "a", ok=False, vantages=["IAD"])  # majority lost
    s = scrape(metrics)
    assert s[key(t, pool="eu", endpoint="a", vantage="*", to="unhealthy")] == 1


def health(
    s: dict[tuple[str, frozenset[tuple[str, str]]], float], pool: str, ep: str
) -> dict[str, str]:
    """{vantage: state with value 1} from the one-hot lb_endpoint_health gauge."""
    out: dict[str, str] = {}
    for (name, labels), value in s.items():
        d = dict(labels)
        wanted = name == "lb_endpoint_health" and d["pool"] == pool and d["endpoint"] == ep
        if wanted and value == 1:
            assert d["vantage"] not in out, "one-hot gauge has two states set"
            out[d["vantage"]] = d["state"]
    return out


def test_endpoint_health_gauge_is_one_hot_per_vantage() -> None:
    eng, metrics = attached()
    s = scrape(metrics)
    assert health(s, "eu", "a") == {"*": "unknown", "FRA": "unknown", "IAD": "unknown",
                                     "SIN": "unknown"}  # fmt: skip
    assert health(s, "eu", "c") == {"*": "disabled"}
    assert health(s, "fb", "z") == {"*": "healthy"}  # unmonitored: healthy, no vantages
    probe(eng, "eu", "a", ok=True)
    probe(eng, "eu", "a", ok=False, vantages=["SIN"], reason="HTTP timeout occurred")
    s = scrape(metrics)
    assert health(s, "eu", "a") == {"*": "healthy", "FRA": "healthy", "IAD": "healthy",
                                    "SIN": "unhealthy"}  # fmt: skip
    zeros = [
        labels
        for (name, labels), v in s.items()
        if name == "lb_endpoint_health" and ("endpoint", "a") in labels and v == 0
    ]
    assert len(zeros) == 3 + 3 * 2  # aggregate has 4 states, each vantage 3


def pool_state(s: dict[tuple[str, frozenset[tuple[str, str]]], float], pool: str) -> str:
    states = [
        dict(labels)["state"]
        for (name, labels), v in s.items()
        if name == "lb_pool_health" and ("pool", pool) in labels and v == 1
    ]
    assert len(states) == 1
    return states[0]


def lb_state(s: dict[tuple[str, frozenset[tuple[str, str]]], float], lb: str) -> str:
    states = [
        dict(labels)["state"]
        for (name, labels), v in s.items()
        if name == "lb_load_balancer_state" and ("load_balancer", lb) in labels and v == 1
    ]
    assert len(states) == 1
    return states[0]


def test_pool_and_load_balancer_state_follow_health() -> None:
    eng, metrics = attached()
    s = scrape(metrics)
    assert pool_state(s, "eu") == "unknown"
    assert s[key("lb_pool_eligible", pool="eu")] == 0
    assert lb_state(s, HOST) == LoadBalancerState.FALLBACK
    assert s[key("lb_ready")] == 0

    all_healthy(eng)
    s = scrape(metrics)
    assert pool_state(s, "eu") == "healthy"
    assert s[key("lb_pool_healthy_endpoints", pool="eu")] == 2
    assert s[key("lb_pool_minimum_endpoints", pool="eu")] == 1
    assert s[key("lb_pool_eligible", pool="eu")] == 1
    assert s[key("lb_pool_probe_rtt_seconds", pool="eu", vantage="FRA")] == pytest.approx(0.02)
    assert lb_state(s, HOST) == LoadBalancerState.HEALTHY
    assert s[key("lb_ready")] == 1

    probe(eng, "eu", "b", ok=False, reason="TCP connection failed")
    s = scrape(metrics)
    assert pool_state(s, "eu") == "degraded"
    probe(eng, "eu", "a", ok=False, reason="TCP connection failed")
    s = scrape(metrics)
    assert pool_state(s, "eu") == "critical"
    assert lb_state(s, HOST) == LoadBalancerState.DEGRADED
    probe(eng, "us", "d", ok=False, reason="TCP connection failed")
    assert lb_state(scrape(metrics), HOST) == LoadBalancerState.FALLBACK


def test_in_flight_and_connections_read_at_scrape_time() -> None:
    eng, metrics = attached()
    ep = eng.book.snapshot().pools["eu"].endpoint("a")
    assert ep is not None
    s = scrape(metrics)
    assert s[key("lb_endpoint_in_flight_requests", pool="eu", endpoint="a")] == 0
    eng.live.started(ep)
    eng.live.started(ep)
    eng.live.connection_opened(ep)
    s = scrape(metrics)
    assert s[key("lb_endpoint_in_flight_requests", pool="eu", endpoint="a")] == 2
    assert s[key("lb_endpoint_connections", pool="eu", endpoint="a")] == 1
    eng.live.finished(ep)
    assert scrape(metrics)[key("lb_endpoint_in_flight_requests", pool="eu", endpoint="a")] == 1


def test_request_hooks() -> None:
    _, metrics = attached()
    metrics.request_done(HOST, "eu", "a", 200, 0.003)
    metrics.request_done(HOST, "eu", "a", 200, 0.2)
    metrics.request_done(HOST, "eu", "b", 502, 1.5)
    metrics.request_done(HOST, None, None, 530, 0.0001)
    metrics.request_done("", None, None, 404, 0.0001)
    metrics.request_done(HOST, "eu", "a", 999, 0.1)  # odd statuses still count
    metrics.retry(HOST, "522", "eu")
    metrics.retry(HOST, "522", "eu")
    metrics.retry(HOST, "522", "us")
    metrics.retry(HOST, "stale_connection")  # the pool is optional
    s = scrape(metrics)
    req = "lb_requests_total"
    assert s[key(req, load_balancer=HOST, pool="eu", endpoint="a", status="200")] == 2
    assert s[key(req, load_balancer=HOST, pool="eu", endpoint="b", status="502")] == 1
    assert s[key(req, load_balancer=HOST, pool="", endpoint="", status="530")] == 1
    assert s[key(req, load_balancer="", pool="", endpoint="", status="404")] == 1
    assert s[key(req, load_balancer=HOST, pool="eu", endpoint="a", status="999")] == 1
    dur = "lb_request_duration_seconds"
    a = {"load_balancer": HOST, "pool": "eu", "endpoint": "a"}
    assert s[key(f"{dur}_count", **a)] == 3
    assert s[key(f"{dur}_bucket", le="0.005", **a)] == 1
    assert s[key(f"{dur}_bucket", le="0.25", **a)] == 3
    assert s[key(f"{dur}_sum", **a)] == pytest.approx(0.303)
    b = {"load_balancer": HOST, "pool": "eu", "endpoint": "b"}
    assert s[key(f"{dur}_bucket", le="1.0", **b)] == 0
    assert s[key(f"{dur}_bucket", le="2.5", **b)] == 1
    assert s[key(f"{dur}_count", load_balancer=HOST, pool="", endpoint="")] == 1
    assert s[key(f"{dur}_count", load_balancer="", pool="", endpoint="")] == 1
    retries = "lb_retries_total"
    assert s[key(retries, load_balancer=HOST, pool="eu", reason="522")] == 2
    assert s[key(retries, load_balancer=HOST, pool="us", reason="522")] == 1
    assert s[key(retries, load_balancer=HOST, pool="", reason="stale_connection")] == 1
    assert metrics.request_counts()[(HOST, "eu", "a", "200")] == 2
    assert not any(name.endswith("_created") for name, _ in s)


def test_decisions_affinity_and_fallback() -> None:
    eng, metrics = attached()
    rng = random.Random(1)
    # Nothing probed yet: no eligible pool, the fallback pool answers (R30).
    first = eng.router.decide(Request(host=HOST, wall=1000.0), rng)
    assert first.reason == "fallback"
    metrics.decision(first)
    all_healthy(eng)
    new = eng.router.decide(Request(host=HOST, wall=1000.0), rng)
    metrics.decision(new)
    assert new.set_cookie is not None
    hit = eng.router.decide(Request(host=HOST, cookie=new.set_cookie, wall=1001.0), rng)
    metrics.decision(hit)
    bad = eng.router.decide(Request(host=HOST, cookie="v1.forged.1.x", wall=1001.0), rng)
    metrics.decision(bad)
    retry = eng.router.retry(hit, Request(host=HOST, wall=1001.0), rng, status=522)
    assert retry is None  # zero_downtime_failover=none keeps a pinned session
    retry = eng.router.retry(new, Request(host=HOST, wall=1001.0), rng, status=522)
    assert retry is not None
    metrics.decision(retry)
    metrics.decision(eng.router.decide(Request(host="nope.example.com"), rng))
    s = scrape(metrics)
    d = "lb_steering_decisions_total"
    assert s[key(d, load_balancer=HOST, policy="fallback/random", reason="fallback")] == 1
    assert s[key(d, load_balancer=HOST, policy="off/random", reason="policy")] == 2
    assert s[key(d, load_balancer=HOST, policy="off", reason="affinity")] == 1
    assert s[key(d, load_balancer=HOST, policy="off/random", reason="retry")] == 1
    assert s[key(d, load_balancer="", policy="", reason="unknown_host")] == 1
    assert s[key("lb_fallback_requests_total", load_balancer=HOST)] == 1
    a = "lb_affinity_total"
    assert s[key(a, load_balancer=HOST, outcome="new")] == 2  # fallback + first policy pick
    assert s[key(a, load_balancer=HOST, outcome="hit")] == 1
    assert s[key(a, load_balancer=HOST, outcome="invalid")] == 1
    assert key(a, load_balancer=HEADER_HOST, outcome="new") not in s


def test_reloads_and_config_observer() -> None:
    wall = [100.0]
    eng = engine()
    metrics = Metrics(wall=lambda: wall[0])
    metrics.attach(eng)
    s = scrape(metrics)
    assert s[key("lb_config_last_reload_success_timestamp_seconds")] == 100.0
    assert s[key("lb_config_generation")] == 0
    metrics.reload(False)
    wall[0] = 200.0
    cfg = config()
    smaller = type(cfg)(
        monitors=cfg.monitors,
        pools=cfg.pools[1:],
        load_balancers=(),
        engine=cfg.engine,
    )
    eng.reconfigure(smaller, now=5.0)
    metrics.reload(True)
    s = scrape(metrics)
    assert s[key("lb_config_reloads_total", result="failure")] == 1
    assert s[key("lb_config_reloads_total", result="success")] == 1
    assert s[key("lb_config_generation")] == 1
    assert s[key("lb_config_last_reload_success_timestamp_seconds")] == 200.0
    # The removed pool's state gauges are gone; nothing is left behind for it.
    assert not [k for k in s if k[0].startswith(("lb_pool", "lb_endpoint")) and
                ("pool", "eu") in k[1]]  # fmt: skip


def test_detach_and_reattach() -> None:
    eng, metrics = attached()
    metrics.detach()
    metrics.detach()  # idempotent
    assert metrics.engine is None
    probe(eng, "eu", "a", ok=True)
    s = scrape(metrics)
    assert not [k for k in s if k[0] == "lb_probes_total"]
    assert key("lb_ready") not in s  # no engine: state families are empty
    other = engine()
    metrics.attach(eng)
    metrics.attach(other)  # moves over
    assert eng.observers.probes == [] and other.observers.probes == [metrics.probe_result]
    eng.apply(ProbeResult(pool="eu", endpoint="a", vantage="FRA", at=2.0, ok=True))
    assert not [k for k in scrape(metrics) if k[0] == "lb_probes_total"]


def test_stale_results_for_unknown_endpoints_are_still_counted_safely() -> None:
    eng, metrics = attached()
    eng.apply(ProbeResult(pool="gone", endpoint="x", vantage="FRA", at=1.0, ok=False))
    s = scrape(metrics)
    labels = {"pool": "gone", "endpoint": "x", "vantage": "FRA", "result": "failure"}
    assert s[key("lb_probes_total", reason="", **labels)] == 1


def test_load_balancer_state_counts_geo_pools_too() -> None:
    eng = engine()
    all_healthy(eng)
    probe(eng, "us", "d", ok=False, reason="TCP connection failed")
    snapshot = eng.book.snapshot()
    lb = next(b for b in eng.config.load_balancers if b.name == HEADER_HOST)  # eu only
    assert load_balancer_state(lb, snapshot) == LoadBalancerState.HEALTHY
    geo = dataclasses.replace(lb, steering_policy="geo", region_pools={"ENAM": ("us",)})
    assert load_balancer_state(geo, snapshot) == LoadBalancerState.DEGRADED


def test_endpoint_weight_and_when_states_last_changed() -> None:
    wall = [100.0]
    eng = engine()
    metrics = Metrics(wall=lambda: wall[0])
    metrics.attach(eng)

    def changed() -> tuple[float, float, float, float]:
        s = scrape(metrics)
        name = "lb_endpoint_last_change_timestamp_seconds"
        return (
            s[key(name, pool="eu", endpoint="a")],
            s[key(name, pool="eu", endpoint="b")],
            s[key("lb_pool_last_change_timestamp_seconds", pool="eu")],
            s[key("lb_pool_last_change_timestamp_seconds", pool="us")],
        )

    s = scrape(metrics)
    assert s[key("lb_endpoint_weight", pool="eu", endpoint="a")] == 1.0
    assert s[key("lb_endpoint_weight", pool="eu", endpoint="b")] == 0.5
    assert changed() == (100.0, 100.0, 100.0, 100.0)  # watched since the start
    wall[0] = 150.0
    probe(eng, "eu", "a", ok=True, status=200)  # unknown -> healthy, and the pool with it
    assert changed() == (150.0, 100.0, 150.0, 100.0)
    wall[0] = 200.0
    probe(eng, "eu", "a", ok=True, status=200)  # no change: no new stamp
    assert changed() == (150.0, 100.0, 150.0, 100.0)
    # A flap between two scrapes is still stamped: the gauge says when, not whether.
    wall[0] = 300.0
    probe(eng, "eu", "a", ok=False, reason="TCP connection failed")
    wall[0] = 310.0
    probe(eng, "eu", "a", ok=True, status=200)
    assert changed()[0] == 310.0
    s = scrape(metrics)
    assert s[key("lb_endpoint_health", pool="eu", endpoint="a", vantage="*", state="healthy")]


def test_build_info_and_process_collectors() -> None:
    import platform

    from lb import __version__

    s = scrape(Metrics())
    assert s[key("lb_build_info", version=__version__, python=platform.python_version())] == 1
    assert any(name == "python_info" for name, _ in s)
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc: prometheus_client's process collector exports nothing here")
    assert s[key("process_start_time_seconds")] > 1_600_000_000
    assert s[key("process_open_fds")] > 0


def test_client_connections_over_every_process() -> None:
    metrics = Metrics()
    for delta in (1, 1, 1, -1):
        metrics.connection(delta)
    metrics.worker_client_connections.update({1: 4, 2: 0})
    assert scrape(metrics)[key("lb_client_connections")] == 6
    del metrics.worker_client_connections[1]  # that child exited: its clients went with it
    assert scrape(metrics)[key("lb_client_connections")] == 2


def test_upstream_errors_by_endpoint_and_a_closed_set_of_kinds() -> None:
    metrics = Metrics()
    metrics.upstream_error("eu", "a", "refused")
    metrics.upstream_error("eu", "a", "refused")
    metrics.upstream_error("eu", "b", "tls_certificate")
    metrics.upstream_error("eu", "b", "a kind nobody listed")
    s = scrape(metrics)
    name = "lb_upstream_errors_total"
    assert s[key(name, pool="eu", endpoint="a", kind="refused")] == 2
    assert s[key(name, pool="eu", endpoint="b", kind="tls_certificate")] == 1
    assert s[key(name, pool="eu", endpoint="b", kind="other")] == 1


def test_every_retry_of_a_request_counts_by_its_own_kind() -> None:
    """A request retried on a fresh connection, then failed over, then retried by
    ``retry_on`` counts three retries, each with its kind and the failed attempt's pool
    (only the last one counted before)."""
    from lb.proxy.hooks import Attempt, RequestRecord
    from lb.service import _hooks

    eng, metrics = attached()
    record = RequestRecord(
        method="GET", host=HOST, target="/", client_ip="", datacenter="", request_id="r"
    )
    record.load_balancer, record.pool, record.endpoint = HOST, "us", "us/c"
    record.retried = "retry_on"
    record.attempts = [
        Attempt(pool="eu", endpoint="eu/a", status=502, reused=True, retried="stale_connection"),
        Attempt(pool="eu", endpoint="eu/a", status=522, retried="zero_downtime_failover"),
        Attempt(pool="us", endpoint="us/b", status=503, retry_on="503", retried="retry_on"),
        Attempt(pool="us", endpoint="us/c", status=200),
    ]
    _hooks(eng, metrics).request_done(record)
    s = scrape(metrics)
    retries = "lb_retries_total"
    assert s[key(retries, load_balancer=HOST, pool="eu", reason="stale_connection")] == 1
    assert s[key(retries, load_balancer=HOST, pool="eu", reason="522")] == 1
    assert s[key(retries, load_balancer=HOST, pool="us", reason="retry_on_503")] == 1
    assert sum(v for (name, _), v in s.items() if name == retries) == 3
