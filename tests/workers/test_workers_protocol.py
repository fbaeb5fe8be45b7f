"""The parent/child protocol without processes: a restored worker converges exactly, and
traffic counters survive the trip to the parent."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

from core_builders import make_config, make_pool, result

from lb.engine import Engine
from lb.metrics import Metrics
from lb.workers import _restore, _Runs, drain_traffic, merge_traffic


def view(engine: Engine) -> list[tuple[str, str, str, dict[str, str]]]:
    snap = engine.book.snapshot()
    return [
        (p.name, e.name, e.health.value, {v: h.value for v, h in e.vantage_health.items()})
        for p in snap.pools.values()
        for e in p.endpoints
    ]


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
        message = json.loads(json.dumps(runs.restore_message(parent)))
        child = Engine(config)
        _restore(child, message["restore"])
        assert view(child) == view(parent), seed
        for r in stream[cut:]:
            parent.apply(r)
            child.apply(r)
            assert view(child) == view(parent), seed


def test_traffic_counters_move_from_child_to_parent() -> None:
    child, parent = Metrics(), Metrics()
    child.request_done("lb", "p", "e", 200, 0.003)
    child.request_done("lb", "p", "e", 200, 0.02)
    child.retry("lb", "522")
    parent.request_done("lb", "p", "e", 200, 0.001)
    report = json.loads(json.dumps(drain_traffic(child)))
    assert drain_traffic(child) == {}  # moved out, not copied
    merge_traffic(parent, report)
    assert parent.requests.values == {("lb", "p", "e", "200"): 3.0}
    assert parent.retries.values == {("lb", "522"): 1.0}
    slots = parent.request_duration.data[("lb",)]
    assert sum(slots[:-1]) == 3 and abs(slots[-1] - 0.024) < 1e-9
