"""Flap damping over the admin listener: /status shows the penalty, /metrics the suppression."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
import trio
from admin_builders import config, probe, samples
from admin_builders import engine as make_engine

from lb.admin import serve_admin
from lb.config.model import FlapDamping
from lb.metrics import Metrics

pytestmark = pytest.mark.integration


async def test_status_and_metrics_show_flap_damping(nursery: trio.Nursery) -> None:
    cfg = config()
    cfg = dataclasses.replace(
        cfg, engine=dataclasses.replace(cfg.engine, flap_damping=FlapDamping())
    )
    engine = make_engine(cfg)
    metrics = Metrics()
    metrics.attach(engine)
    host, port = await nursery.start(
        lambda task_status: serve_admin(
            engine, metrics, host="127.0.0.1", port=0, task_status=task_status
        )
    )
    now = trio.current_time()  # the clock /status decays the penalty to
    probe(engine, "eu", "a", ok=True, at=now - 4)
    for i, ok in enumerate([False, True, False]):
        probe(engine, "eu", "a", ok=ok, at=now - 3 + i)
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as client:
        doc = (await client.get("/status")).json()
        text = (await client.get("/metrics")).text
    eu = {p["name"]: p for p in doc["pools"]}["eu"]
    a = {e["name"]: e for e in eu["endpoints"]}["a"]
    assert a["health"] == "unhealthy"
    assert a["damping"]["suppressed"] is True
    assert a["damping"]["penalty"] > 2.5
    assert {e["name"]: e for e in eu["endpoints"]}["b"]["damping"] == {
        "penalty": 0.0,
        "suppressed": False,
    }
    labels = {"pool": "eu", "endpoint": "a", "vantage": "damping", "to": "unhealthy"}
    assert samples(text)[("lb_health_transitions_total", frozenset(labels.items()))] == 1
