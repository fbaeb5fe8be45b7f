"""R16 in the admin views: /status shows each group member per vantage point, and the
metrics count member checks by member."""

from __future__ import annotations

from admin_builders import HOST, key, samples
from prometheus_client import generate_latest

from lb.admin import status_json
from lb.config.model import (
    Config,
    EngineSettings,
    LoadBalancer,
    Monitor,
    MonitorGroup,
    MonitorGroupMember,
    Origin,
    Pool,
)
from lb.core.health import ProbeResult
from lb.engine import Engine
from lb.metrics import Metrics


def grouped() -> Config:
    return Config(
        monitors=(Monitor(id="api", path="/api"), Monitor(id="login", path="/login")),
        monitor_groups=(
            MonitorGroup(
                id="g",
                members=(
                    MonitorGroupMember(monitor_id="api"),
                    MonitorGroupMember(monitor_id="login", must_be_healthy=True),
                ),
            ),
        ),
        pools=(Pool(name="p", monitor_group="g", origins=(Origin(name="e", address="10.0.0.1"),)),),
        load_balancers=(
            LoadBalancer(proxied=True, name=HOST, default_pools=("p",), fallback_pool="p"),
        ),
        engine=EngineSettings(vantage_points=("FRA", "IAD")),
    )


def test_status_and_metrics_show_each_member() -> None:
    eng = Engine(grouped(), secret=b"admin-tests")
    metrics = Metrics(wall=lambda: 1_700_000_000.0)
    metrics.attach(eng)
    for v in ("FRA", "IAD"):
        eng.apply(ProbeResult(pool="p", endpoint="e", vantage=v, at=1.0, ok=True, member="api"))
    eng.apply(
        ProbeResult(
            pool="p",
            endpoint="e",
            vantage="FRA",
            at=2.0,
            ok=False,
            reason="Response code mismatch",
            status=503,
            member="login",
        )
    )
    doc = status_json(eng, metrics, now=3.0)
    pool = next(p for p in doc["pools"] if p["name"] == "p")
    assert pool["monitor_group"] == "g"
    [endpoint] = pool["endpoints"]
    fra, iad = endpoint["vantages"]["FRA"], endpoint["vantages"]["IAD"]
    assert fra["health"] == "unhealthy"  # the critical member failed
    assert fra["members"]["api"]["health"] == "healthy"
    assert fra["members"]["login"]["health"] == "unhealthy"
    assert fra["members"]["login"]["last_probe"]["status"] == 503
    assert fra["members"]["login"]["last_probe"]["age"] == 1.0
    assert iad["health"] == "unknown"  # login has not answered from IAD
    assert iad["members"]["login"] == {"health": "unknown", "last_probe": None}

    s = samples(generate_latest(metrics.registry))
    base = {"pool": "p", "endpoint": "e"}
    member = "lb_monitor_group_probes_total"
    assert s[key(member, vantage="FRA", member="api", result="success", **base)] == 1
    assert s[key(member, vantage="IAD", member="api", result="success", **base)] == 1
    assert s[key(member, vantage="FRA", member="login", result="failure", **base)] == 1
