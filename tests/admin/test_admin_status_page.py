"""The status page without a browser: what ``/`` serves, and the activity ``/status`` carries.

The page itself is rendered in Chromium by ``test_admin_status_page_browser.py``; here are the
parts a browser test would find slowly or not at all: the confining headers, no external
asset, no HTML parsing of data in the script, and the arithmetic of the traffic window.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import partial
from importlib import resources

import pytest
import trio
from admin_builders import HOST, StartAdmin, probe

from lb.admin import serve_admin
from lb.core.health import Health, HealthEvent
from lb.engine import Engine
from lb.metrics import Metrics
from lb.status_page import Activity, page

pytestmark = pytest.mark.integration

HTML = resources.files("lb").joinpath("data/status.html").read_text(encoding="utf-8")


def event(
    at: float, endpoint: str = "a", *, vantage: str = "*", after: str = "unhealthy"
) -> HealthEvent:
    return HealthEvent(
        at=at,
        pool="eu",
        endpoint=endpoint,
        vantage=vantage,
        before=Health.HEALTHY,
        after=Health(after),
        reason="HTTP timeout occurred",
    )


async def test_page_is_self_contained_and_confined(start_admin: StartAdmin) -> None:
    client = await start_admin()
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.text == HTML
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    script = re.search(r"<script>(.*?)</script>", HTML, re.S)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp  # only this script runs, nothing injected
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in csp
    # Works offline: nothing is loaded from anywhere else.
    assert not re.search(r"\b(src|href)\s*=", HTML)
    assert "http://" not in HTML and "https://" not in HTML and "@import" not in HTML
    # Data never becomes markup.
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in HTML
    head = await client.head("/")
    assert head.status_code == 200 and head.content == b""
    # The page is behind the same Host check as the rest (DNS rebinding).
    assert (await client.get("/", headers={"Host": "evil.example"})).status_code == 421


async def test_status_carries_activity(
    start_admin: StartAdmin, engine: Engine, metrics: Metrics
) -> None:
    client = await start_admin()
    probe(engine, "eu", "a", ok=True)
    probe(engine, "eu", "a", ok=False, reason="TCP connection failed", at=2.0)
    metrics.request_done(HOST, "eu", "b", 200, 0.01)
    metrics.request_done(HOST, "eu", "b", 200, 0.01)
    metrics.request_done(HOST, "us", "d", 502, 0.01)
    activity = (await client.get("/status")).json()["activity"]
    assert activity["requests"] == 3
    assert activity["endpoints"]["eu/b"]["share"] == pytest.approx(2 / 3, abs=1e-3)
    assert activity["endpoints"]["us/d"]["requests"] == 1
    last = activity["endpoints"]["eu/a"]["last_transition"]
    assert (last["after"], last["reason"], last["vantage"]) == (
        "unhealthy",
        "TCP connection failed",
        "*",
    )
    # A Unix time, from the engine clock's reading of the event.
    assert last["wall"] == pytest.approx(activity["wall"] - last["age"], abs=1.0)
    transitions = activity["transitions"]
    assert transitions[0]["after"] == "unhealthy"  # newest first
    assert {t["vantage"] for t in transitions} >= {"*", "FRA"}


def test_activity_window() -> None:
    activity = Activity(window=60)
    activity.sample(0.0, {("eu", "a"): 10})
    activity.sample(30.0, {("eu", "a"): 40})
    activity.sample(65.0, {("eu", "a"): 100, ("eu", "b"): 5})
    doc = activity.as_json(95.0, 1_700_000_000.0, {("eu", "a"): 110, ("eu", "b"): 10})
    # The baseline is the newest sample at least a window old: t=30 (t=0 is too old).
    assert doc["window"] == 65.0
    assert doc["endpoints"]["eu/a"]["requests"] == 70
    assert doc["endpoints"]["eu/b"]["requests"] == 10
    assert doc["requests"] == 80
    assert doc["endpoints"]["eu/a"]["share"] == pytest.approx(70 / 80, abs=1e-4)
    # Shortly after start, the window is what there is: since the first sample.
    doc = activity.as_json(40.0, 0.0, {("eu", "a"): 50})
    assert (doc["window"], doc["requests"]) == (40.0, 40)
    assert Activity().as_json(0.0, 0.0, {})["endpoints"] == {}


def test_activity_keeps_recent_transitions_bounded() -> None:
    activity = Activity(recent=3)
    for i in range(5):
        activity.on_health(event(float(i), vantage="FRA" if i % 2 else "*"), wall=1000.0 + i)
    doc = activity.as_json(10.0, 1010.0, {})
    assert [t["wall"] for t in doc["transitions"]] == [1004.0, 1003.0, 1002.0]
    # The endpoint's last transition is the aggregate one, not a single vantage point's.
    assert doc["endpoints"]["eu/a"]["last_transition"]["wall"] == 1004.0
    assert doc["endpoints"]["eu/a"]["last_transition"]["age"] == 6.0


def test_page_is_read_once() -> None:
    assert page() is page()


async def test_observer_is_removed_when_the_admin_stops(engine: Engine, metrics: Metrics) -> None:
    before = list(engine.observers.health)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve_admin, engine, metrics, host="127.0.0.1", port=0))
        assert len(engine.observers.health) == len(before) + 1
        nursery.cancel_scope.cancel()
    assert engine.observers.health == before
