"""The parent/child protocol without processes: a restored worker converges exactly, and
traffic counters survive the trip to the parent."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

from core_builders import health_view, make_config, make_pool, result
from prometheus_client import generate_latest

from lb.admin import status_json
from lb.config.model import FlapDamping
from lb.core.snapshot import EndpointView
from lb.engine import Engine, live_report
from lb.metrics import METRICS, Metrics
from lb.proxy.hooks import Attempt, RequestRecord
from lb.workers import (
    Restore,
    _live_from,
    _restore,
    _Runs,
    decode,
    drain_traffic,
    encode,
    merge_traffic,
)


async def test_a_worker_started_at_any_point_follows_the_parent_exactly() -> None:
    for seed in range(40):
        rng = random.Random(seed)
        config = make_config(
            make_pool("a", 2),
            make_pool("b", 1),
            up=rng.randint(0, 4),
            down=rng.randint(0, 4),
            vantage_points=("x", "y", "z")[: rng.randint(1, 3)],
        )
        if seed % 2:  # flap damping has a history the states alone do not carry
            config = dataclasses.replace(
                config, engine=dataclasses.replace(config.engine, flap_damping=FlapDamping())
            )
        vantages = config.engine.vantage_points
        keys = [(p, e, v) for p, e in (("a", "a-0"), ("a", "a-1"), ("b", "b-0")) for v in vantages]
        stream = [
            result(p, e, rng.random() < 0.6, vantage=v, rtt=rng.random())
            for p, e, v in (rng.choice(keys) for _ in range(200))
        ]
        parent, runs = Engine(config), _Runs()
        parent.observers.probes.append(runs.observe)
        cut = rng.randrange(len(stream))
        for r in stream[:cut]:
            parent.apply(r)
        message = decode(encode(runs.restore_message(parent)))
        assert isinstance(message, Restore)
        child = Engine(config)
        _restore(child, message)
        assert health_view(child.book) == health_view(parent.book), seed
        for r in stream[cut:]:
            parent.apply(r)
            child.apply(r)
            assert health_view(child.book) == health_view(parent.book), seed


def test_traffic_counters_move_from_child_to_parent() -> None:
    child, parent = Metrics(), Metrics()
    child.request_done("lb", "p", "e", 200, 0.003)
    child.request_done("lb", "p", "e", 200, 0.02)
    child.retry("lb", "522", "p")
    parent.request_done("lb", "p", "e", 200, 0.001)
    report = json.loads(json.dumps(drain_traffic(child)))
    assert drain_traffic(child) == {}  # moved out, not copied
    merge_traffic(parent, report)
    assert parent.requests.values == {("lb", "p", "e", "200"): 3.0}
    assert parent.retries.values == {("lb", "p", "522"): 1.0}
    slots = parent.request_duration.data[("lb", "p", "e")]
    assert sum(slots[:-1]) == 3 and abs(slots[-1] - 0.024) < 1e-9


def test_children_websocket_counts_reach_the_parent() -> None:
    parent, child = Metrics(), Metrics()
    child.websocket_opened("lb", "p", "e")
    child.websocket_opened("lb", "p", "e")
    child.websocket_closed("lb", 100, 2000)
    parent.websocket_opened("lb", "p", "f")
    merge_traffic(parent, json.loads(json.dumps(drain_traffic(child))))
    assert parent.websockets_open == {"lb": 2}  # its own, and the child's still open
    assert parent.upgrades.values == {("lb", "p", "e"): 2.0, ("lb", "p", "f"): 1.0}
    assert parent.websocket_bytes.values == {("lb", "in"): 100.0, ("lb", "out"): 2000.0}
    child.websocket_closed("lb", 0, 0)
    merge_traffic(parent, json.loads(json.dumps(drain_traffic(child))))
    assert parent.websockets_open == {"lb": 1}


def test_children_proxy_metrics_reach_the_parent() -> None:
    parent, child = Metrics(), Metrics()
    record = RequestRecord(
        "GET", "h", "/", "127.0.0.1", "", "r1", "lb", "p", "p/e", upstream_status=200
    )
    record.bytes_in, record.bytes_out = 10, 200
    first = Attempt("p", "p/e", 521, "refused")
    second = Attempt("p", "p/e", 200, connect_time=0.002, first_byte=0.03)
    record.attempts = [first, second]
    child.request_started(record)
    child.exchange_done(record)
    merge_traffic(parent, json.loads(json.dumps(drain_traffic(child))))
    assert parent.client_bytes.values == {("lb", "received"): 10.0, ("lb", "sent"): 200.0}
    assert parent.endpoint_bytes.values == {("p", "e", "sent"): 10.0, ("p", "e", "received"): 200.0}
    assert sum(parent.connect_duration.data[("p", "e")][:-1]) == 1
    assert sum(parent.first_byte.data[("p", "e")][:-1]) == 1
    assert drain_traffic(child) == {}


def test_children_live_counts_add_up_in_gauges_and_status() -> None:
    config = make_config(make_pool("a", 2), make_pool("b", 1))
    parent, child = Engine(config), Engine(config)
    metrics = Metrics()
    metrics.attach(parent)

    def ep(engine: Engine, pool: str, name: str) -> EndpointView:
        found = engine.book.snapshot().pools[pool].endpoint(name)
        assert found is not None
        return found

    parent.live.started(ep(parent, "a", "a-0"))
    parent.live.connection_opened(ep(parent, "a", "a-0"))
    for _ in range(3):
        child.live.started(ep(child, "a", "a-0"))
    child.live.started(ep(child, "b", "b-0"))
    child.live.finished(ep(child, "b", "b-0"))  # back to 0: not reported
    child.live.connection_opened(ep(child, "a", "a-1"))
    report = json.loads(json.dumps(live_report(child.live)))
    assert report == {"in_flight": {"a/a-0": 3}, "connections": {"a/a-1": 1}}
    parent.reported[1] = _live_from(report)

    totals = parent.live_totals()
    assert totals.in_flight == {"a/a-0": 4}
    assert totals.connections == {"a/a-0": 1, "a/a-1": 1}
    assert (totals.pool_in_flight, totals.pool_connections) == ({"a": 4}, {"a": 2})
    text = generate_latest(metrics.registry).decode()
    assert 'lb_endpoint_in_flight_requests{endpoint="a-0",pool="a"} 4.0' in text
    assert 'lb_endpoint_connections{endpoint="a-1",pool="a"} 1.0' in text
    status = status_json(parent, metrics, now=0.0)
    assert status["traffic"]["in_flight"] == 4 and status["traffic"]["connections"] == 2
    pool_a = next(p for p in status["pools"] if p["name"] == "a")
    assert (pool_a["in_flight"], pool_a["connections"]) == (4, 2)
    assert [e["in_flight"] for e in pool_a["endpoints"]] == [4, 0]
    # Steering still reads this process's own counts only.
    assert dict(parent.live.in_flight) == {"a/a-0": 1}
    parent.reported.clear()
    assert parent.live_totals().in_flight == {"a/a-0": 1}


def test_a_malformed_live_report_is_dropped_not_raised() -> None:
    assert _live_from(None) == {}
    assert _live_from({"in_flight": [1], "connections": {"a/x": "2", "a/y": 2, "a/z": -1}}) == {
        "connections": {"a/y": 2}
    }


def test_every_counter_and_histogram_travels_to_the_parent() -> None:
    """Every event series travels, by construction: a new one needs no change in workers."""
    kinds = {spec.name for spec in METRICS if spec.kind in ("counter", "histogram")}
    child, parent = Metrics(), Metrics()
    assert set(child.events) == kinds
    for name, store in child.events.items():
        labels = tuple(f"{name}-{label}" for label in store.spec.labels)
        if isinstance(store, type(child.requests)):
            store.inc(labels, 2.0)
        else:
            store.observe(labels, 0.3)
    report = json.loads(json.dumps(drain_traffic(child)))
    assert set(report) == kinds
    merge_traffic(parent, report)
    merge_traffic(parent, report)  # a second report adds up
    for name, store in parent.events.items():
        ((labels, value),) = store.take()
        assert labels == [f"{name}-{label}" for label in store.spec.labels]
        if store.spec.kind == "counter":
            assert value == 4.0, name
        else:  # two observations of 0.3, in the 0.5 bucket, sum 0.6
            assert sum(value[:-1]) == 2 and math.isclose(value[-1], 0.6), name
