"""What the simulated network does, seen through whole (short) runs of the real engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from sim_builders import CONFIG, TUNNEL_A, scenario

from lb.config import ConfigError
from lb.sim import run_scenario

BASE = """\
config: lb.yaml
duration: 60
seed: 11
report_interval: 10
traffic:
  FRA: {rate: 100, clients: 200}
"""


def test_a_replica_failure_is_absorbed_inside_the_tunnel(tmp_path: Path) -> None:
    """The edge sends FRA users to the replica connected in FRA; when it refuses, to the
    other replica (IAD): no error, no health change, traffic per replica moves."""
    sc = scenario(tmp_path, BASE + "timeline:\n  - {at: 30, replica: ta/r1, do: refuse}\n")
    data = run_scenario(sc).data
    assert data["errors"] == 0
    assert data["failovers"] == []  # one replica is not the endpoint
    late = [w for w in data["windows"] if w["start"] >= 30]
    assert all("ta/r1" not in w["by_replica"] for w in late)
    assert all(w["by_replica"].get("ta/r2", 0) > 0 for w in late)


def test_partition_seen_from_one_vantage_point_is_outvoted(tmp_path: Path) -> None:
    """R14: with three vantage points, one cut off does not change the aggregate health."""
    config = CONFIG + "engine: {vantage_points: [FRA, IAD, SIN]}\n"
    body = BASE + "timeline:\n  - {at: 20, tunnel: ta, do: partition, seen_from: [SIN]}\n"
    data = run_scenario(scenario(tmp_path, body, config=config)).data
    sin = [t for t in data["transitions"] if t["vantage"] == "SIN" and t["to"] == "unhealthy"]
    assert sin and sin[0]["reason"] == "No route to host"
    assert not [t for t in data["transitions"] if t["vantage"] == "*" and t["to"] == "unhealthy"]
    assert data["errors"] == 0  # users enter at FRA, which still reaches the tunnel


def test_partition_seen_from_users_data_center_gives_523_and_retries(tmp_path: Path) -> None:
    body = BASE + "timeline:\n  - {at: 20, tunnel: ta, do: partition, seen_from: [FRA]}\n"
    data = run_scenario(scenario(tmp_path, body)).data
    assert data["retries"] > 0  # 523 is a zero-downtime failover code (R42)
    assert data["errors"] == 0


def test_status_503_fails_the_monitor_and_users(tmp_path: Path) -> None:
    body = BASE + "timeline:\n  - {at: 20, tunnel: tb, do: status, status: 503, until: 40}\n"
    data = run_scenario(scenario(tmp_path, body)).data
    down = [t for t in data["transitions"] if t["vantage"] == "*" and t["to"] == "unhealthy"]
    assert down and down[0]["reason"] == "Response code mismatch"
    assert data["statuses"]["503"] > 0
    assert data["retries"] == 0  # 503 is not a zero-downtime failover code
    (f,) = data["failovers"]
    assert f["endpoint"] == "b" and f["recovered_at"] == 40
    assert f["detected_at"] is not None and f["drained_at"] is not None


def test_blackhole_times_out_probes_with_the_real_retry_rule(tmp_path: Path) -> None:
    config = CONFIG.replace("retries: 0", "retries: 2")
    body = BASE + "timeline:\n  - {at: 5, tunnel: tb, do: blackhole}\n"
    data = run_scenario(scenario(tmp_path, body, config=config)).data
    down = [t for t in data["transitions"] if t["vantage"] == "*" and t["to"] == "unhealthy"]
    assert down and down[0]["reason"] == "TCP timeout"
    # each check of b costs 1 + retries attempts while it is blackholed (R8)
    assert data["probes"] > data["checks"]


def test_latency_is_seen_by_probes_and_can_time_them_out(tmp_path: Path) -> None:
    body = BASE + "timeline:\n  - {at: 5, origin: tb, do: latency, latency: 3}\n"
    data = run_scenario(scenario(tmp_path, body)).data
    down = [t for t in data["transitions"] if t["vantage"] == "*" and t["to"] == "unhealthy"]
    assert down and down[0]["reason"] == "HTTP timeout occurred"


def test_disable_and_weight_are_config_changes(tmp_path: Path) -> None:
    body = (
        BASE
        + "timeline:\n"
        + "  - {at: 20, endpoint: main/b, do: disable, until: 40}\n"
        + "  - {at: 40, endpoint: main/a, do: weight, weight: 0}\n"
    )
    data = run_scenario(scenario(tmp_path, body)).data
    by_window = {w["start"]: w["by_endpoint"] for w in data["windows"]}
    assert "main/b" not in by_window[20.0] and "main/b" not in by_window[30.0]
    assert "main/a" not in by_window[40.0] and "main/a" not in by_window[50.0]
    (f,) = data["failovers"]
    assert (f["cause"], f["failed_at"], f["detected_at"]) == ("disable endpoint main/b", 20, 20)
    assert f["drained_at"] == 20 and f["recovered_at"] == 40


def test_tunnel_down_gives_530_without_retry(tmp_path: Path) -> None:
    body = BASE + "timeline:\n  - {at: 20, tunnel: tb, do: down}\n"
    data = run_scenario(scenario(tmp_path, body)).data
    assert data["statuses"]["530"] > 0 and data["retries"] == 0


def test_unrouted_requests_when_no_pool_can_serve(tmp_path: Path) -> None:
    body = BASE + "timeline:\n  - {at: 0, pool: main, do: disable}\n"
    data = run_scenario(scenario(tmp_path, body)).data
    assert data["unrouted"] == data["requests"] == data["errors"]
    assert data["statuses"] == {"530": data["requests"]}


def test_piecewise_rate_and_datacenter_counts(tmp_path: Path) -> None:
    body = BASE.replace(
        "{rate: 100, clients: 200}", "{rate: [{at: 0, rate: 10}, {at: 30, rate: 50}]}"
    )
    data = run_scenario(scenario(tmp_path, body)).data
    counts = [w["requests"] for w in data["windows"]]
    assert counts == [100, 100, 100, 500, 500, 500]
    assert data["by_datacenter"] == {"FRA": 1800}


def test_least_outstanding_requests_reads_live_counts(tmp_path: Path) -> None:
    """Slow endpoint b holds more requests in flight, so LORS sends it less (R21)."""
    config = CONFIG.replace(
        "    monitor: app\n",
        "    monitor: app\n    origin_steering: {policy: least_outstanding_requests}\n",
    )
    body = BASE.replace("rate: 100", "rate: 2000") + (
        "timeline:\n  - {at: 0, origin: tb, do: latency, latency: 1.5}\n"
    )
    data = run_scenario(scenario(tmp_path, body, config=config)).data
    assert data["by_endpoint"]["main/a"] > 3 * data["by_endpoint"]["main/b"]


def test_header_affinity_sessions(tmp_path: Path) -> None:
    config = CONFIG.replace(
        "fallback_pool: main}",
        "fallback_pool: main, session_affinity: header,\n"
        "     session_affinity_attributes: {headers: [x-session]}}",
    )
    body = BASE.replace("clients: 200", "clients: 200, headers: 1.0") + (
        "timeline:\n  - {at: 30, tunnel: ta, do: refuse}\n"
    )
    data = run_scenario(scenario(tmp_path, body, config=config)).data
    aff = data["affinity"]
    assert aff["mode"] == "header" and aff["sessions"] > 0 and aff["hits"] > 0
    assert aff["remapped"] > 0  # sessions on a moved once a was marked unhealthy


def test_tunnel_uuid_is_accepted_as_a_name(tmp_path: Path) -> None:
    body = BASE + f"timeline:\n  - {{at: 30, tunnel: {TUNNEL_A}, do: refuse}}\n"
    assert scenario(tmp_path, body).events[0].label == f"refuse tunnel {TUNNEL_A}"


def test_fixed_responses_of_pool_sets_are_answers_not_unrouted(tmp_path: Path) -> None:
    """R31 in the simulator: a pool set answering FRA with a 301 and IAD with a 503 counts
    those statuses; only the 503 is an error, and neither is "no pool could serve"."""
    config = CONFIG.replace(
        "load_balancers:\n"
        "  - {name: app.example.com, proxied: true, default_pools: [main], fallback_pool: main}",
        """load_balancers:
  - name: app.example.com
    proxied: true
    default_pools: [main]
    fallback_pool: main
    pool_sets:
      - {match: {topology: {pops: [FRA]}}, fixed_response: {status_code: 301, location: /x}}
      - {match: {topology: {pops: [IAD]}}, fixed_response: {status_code: 503}}""",
    )
    body = BASE.replace(
        "  FRA: {rate: 100, clients: 200}",
        "  FRA: {rate: 100, clients: 200}\n  IAD: {rate: 50, clients: 100}",
    )
    data = run_scenario(scenario(tmp_path, body, config=config)).data
    statuses = {int(k): v for k, v in data["statuses"].items()}
    assert set(statuses) == {301, 503}
    assert statuses[301] > 0 and statuses[503] > 0
    assert data["errors"] == statuses[503]
    assert data["unrouted"] == 0


def test_custom_rules_see_the_traffic_path(tmp_path: Path) -> None:
    """R32 in the simulator: a rule on the path sends FRA's /api traffic to another pool."""
    config = CONFIG.replace(
        "load_balancers:\n"
        "  - {name: app.example.com, proxied: true, default_pools: [main], fallback_pool: main}",
        f"""  - name: api
    monitor: app
    origins:
      - {{name: c, address: {TUNNEL_A}.cfargotunnel.com}}
load_balancers:
  - name: app.example.com
    proxied: true
    default_pools: [main]
    fallback_pool: main
    rules:
      - condition: 'starts_with(http.request.uri.path, "/api/")'
        overrides: {{default_pools: [api]}}""",
    )
    # Traffic after the first probe round: until then no pool is eligible (R30: fallback).
    after = "rate: [{at: 0, rate: 0}, {at: 20, rate: %d}]"
    body = BASE.replace(
        "  FRA: {rate: 100, clients: 200}",
        f"  FRA: {{{after % 100}, clients: 200, path: /api/v1}}\n"
        f"  IAD: {{{after % 50}, clients: 100}}",
    )
    data = run_scenario(scenario(tmp_path, body, config=config)).data
    by_dc = data["by_datacenter"]
    assert by_dc["FRA"] > 0 and by_dc["IAD"] > 0
    assert data["by_pool"] == {"api": by_dc["FRA"], "main": by_dc["IAD"]}


def test_item_03_traffic_country_steers_by_the_clients_country(tmp_path: Path) -> None:
    """Simulated users carry a country: German users entering at AMS get country_pools[DE]."""
    config = CONFIG.replace(
        "load_balancers:\n"
        "  - {name: app.example.com, proxied: true, default_pools: [main], fallback_pool: main}",
        f"""  - name: de
    monitor: app
    origins:
      - {{name: c, address: {TUNNEL_A}.cfargotunnel.com}}
load_balancers:
  - name: app.example.com
    proxied: true
    steering_policy: geo
    default_pools: [main]
    fallback_pool: main
    country_pools: {{DE: [de]}}""",
    )
    after = "rate: [{at: 0, rate: 0}, {at: 20, rate: %d}]"
    body = BASE.replace(
        "  FRA: {rate: 100, clients: 200}",
        f"  AMS: {{{after % 100}, clients: 200, country: DE}}\n"
        f"  IAD: {{{after % 50}, clients: 100}}",
    )
    data = run_scenario(scenario(tmp_path, body, config=config)).data
    by_dc = data["by_datacenter"]
    assert by_dc["AMS"] > 0 and by_dc["IAD"] > 0
    assert data["by_pool"] == {"de": by_dc["AMS"], "main": by_dc["IAD"]}
    bad = BASE.replace("{rate: 100, clients: 200}", "{rate: 100, clients: 200, country: de}")
    with pytest.raises(ConfigError, match="two-letter upper-case country code"):
        scenario(tmp_path, bad, config=config)


def test_a_refusing_endpoint_stops_answering_at_once_and_is_drained_at_detection(
    tmp_path: Path,
) -> None:
    """Under zero-downtime failover a refused attempt is retried elsewhere: the endpoint's
    last answer is at the failure, while steering keeps picking it until detection."""
    body = BASE + "timeline:\n  - {at: 20, tunnel: tb, do: refuse, until: 50}\n"
    data = run_scenario(scenario(tmp_path, body)).data
    assert data["retries"] > 0
    (f,) = data["failovers"]
    assert f["answered_at"] == 20
    assert f["drained_at"] is not None and f["detected_at"] is not None
    assert f["drained_at"] > f["answered_at"]


def test_a_503_endpoint_keeps_answering_until_drained(tmp_path: Path) -> None:
    body = BASE + "timeline:\n  - {at: 20, tunnel: tb, do: status, status: 503, until: 50}\n"
    (f,) = run_scenario(scenario(tmp_path, body)).data["failovers"]
    assert f["answered_at"] == f["drained_at"] > 20


def test_attempts_in_flight_end_when_their_data_center_stops_sending(tmp_path: Path) -> None:
    """least_outstanding_requests reads in-flight counts the data centers share.  FRA's
    attempts at b (3 s slow from 20 s) still in flight when FRA stops sending at 22 s end
    3 s later all the same, so from 30 s IAD steers by the real counts: half to each, not
    away from b for good."""
    config = CONFIG.replace(
        "    monitor: app\n",
        "    monitor: app\n    origin_steering: {policy: least_outstanding_requests}\n",
    )
    body = """\
        config: lb.yaml
        duration: 60
        seed: 11
        report_interval: 10
        traffic:
          FRA: {rate: [{at: 0, rate: 100}, {at: 22, rate: 0}], clients: 200}
          IAD: {rate: 100, clients: 200}
        timeline:
          - {at: 20, origin: tb, do: latency, latency: 3, until: 23}
        """
    data = run_scenario(scenario(tmp_path, body, config=config)).data
    for w in data["windows"]:
        if w["start"] >= 30:
            assert 0.4 < w["by_endpoint"]["main/b"] / w["requests"] < 0.6, w
