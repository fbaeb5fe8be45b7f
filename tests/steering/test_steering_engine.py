"""The engine is the one writer of steering state: ``Router.decide`` only reads, and the
engine stores what a decision asks to remember (``Decision.remember``)."""

from __future__ import annotations

import random

from builders import config, load_balancer, pool, request

from lb.config.model import SessionAffinityAttributes
from lb.engine import Engine
from steering import Affinity


def header_engine() -> Engine:
    attrs = SessionAffinityAttributes(headers=("x-session",), zero_downtime_failover="temporary")
    lb = load_balancer(["a"], session_affinity="header", session_affinity_attributes=attrs)
    return Engine(config([pool("a", 5, monitor=None)], lb), secret=b"s")


def test_engine_decide_stores_the_session_the_router_only_names() -> None:
    engine = header_engine()
    q = request(headers={"x-session": "s1"}, now=0)
    alone = engine.router.decide(q, random.Random(1), engine.live)
    assert alone.remember is not None and len(engine.sessions) == 0
    first = engine.decide(q, random.Random(1))
    assert first.affinity == Affinity.NEW and len(engine.sessions) == 1
    for seed in range(10):
        d = engine.decide(request(headers={"x-session": "s1"}, now=5), random.Random(seed))
        assert (d.affinity, d.endpoint) == (Affinity.HIT, first.endpoint)


def test_engine_retry_stores_the_new_endpoint() -> None:
    engine = header_engine()
    q = request(headers={"x-session": "s1"}, now=0)
    first = engine.decide(q, random.Random(1))
    again = engine.retry(first, q, random.Random(2), status=522)
    assert again is not None and again.endpoint != first.endpoint
    assert again.remember is not None and again.remember.endpoint == again.endpoint.key
    after = engine.decide(request(headers={"x-session": "s1"}, now=1), random.Random(3))
    assert (after.affinity, after.endpoint) == (Affinity.HIT, again.endpoint)
