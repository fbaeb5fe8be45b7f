"""Probe identities from the configuration: Host (R5), SNI (R4), port (R7), User-Agent (R6)."""

from __future__ import annotations

from monitor_builders import monitor, target

from lb.config.model import Config, EngineSettings, Monitor, Origin, Pool
from lb.core.book import HealthBook
from monitors import jobs_for_config, plan, probe_for
from monitors.spec import CLOUDFLARE_UA


def test_host_precedence_r5() -> None:
    m = monitor(0, host="monitor.test")
    assert probe_for(target(m, origin_host="endpoint.test")).host == "endpoint.test"
    assert probe_for(target(m)).host == "monitor.test"
    assert probe_for(target(monitor(0, host=None), address="addr.test")).host == "addr.test"


def test_sni_follows_host_and_is_absent_for_ip() -> None:
    assert probe_for(target(monitor(0, host="app.test:8443"))).sni == "app.test"
    assert probe_for(target(monitor(0, host=None), address="192.0.2.1")).sni is None
    assert probe_for(target(monitor(0, host=None), address="2001:db8::1")).sni is None


def test_port_r7_and_endpoint_port() -> None:
    assert probe_for(target(monitor(0))).port == 443
    assert probe_for(target(monitor(0, type="http"))).port == 80
    assert probe_for(target(monitor(8443))).port == 8443
    assert probe_for(target(monitor(0), origin_port=9443)).port == 9443
    assert probe_for(target(monitor(8443), origin_port=9443)).port == 8443


def test_connect_to_changes_only_the_dial_address() -> None:
    t = target(monitor(0), address="tunnel.test")
    p = probe_for(t, connect_to={"tunnel.test:443": "127.0.0.1:18443"})
    assert (p.dial_host, p.dial_port, p.host, p.sni, p.port) == (
        "127.0.0.1",
        18443,
        "app.test",
        "app.test",
        443,
    )
    # Keys are always "host:port" (the loader rejects others): a bare key is never looked up.
    q = probe_for(t, connect_to={"tunnel.test": "127.0.0.2"})
    assert (q.dial_host, q.dial_port) == ("tunnel.test", 443)
    r = probe_for(t, connect_to={"other.test:443": "127.0.0.1:1"})
    assert (r.dial_host, r.dial_port) == ("tunnel.test", 443)


def test_headers_drop_host_and_user_agent() -> None:
    m = monitor(0, header={"Host": ("a.test",), "user-agent": ("x",), "X-A": ("1", "2")})
    assert probe_for(target(m)).headers == (("X-A", "1"), ("X-A", "2"))


def test_user_agents() -> None:
    t = target(monitor(0), pool="pool-with-a-very-long-id-000")
    [ours] = plan([t])
    assert (
        ours.probe.user_agent
        == "tunnel-lb/0.1.0 (health-check; pool: pool-with-a-very-long-id-000)"
    )
    [theirs] = plan([t], user_agent_mode="cloudflare")
    assert theirs.probe.user_agent == CLOUDFLARE_UA.format(pool_id="pool-with-a-very")
    assert theirs.probe.user_agent.startswith(
        "Mozilla/5.0 (compatible; Cloudflare-Traffic-Manager/1.0; "
        "+https://www.cloudflare.com/traffic-manager/; pool-id: "
    )


def test_dedup_and_vantage_points() -> None:
    m = monitor(0)
    same = [target(m, pool="a", endpoint="x"), target(m, pool="b", endpoint="y")]
    assert len(plan(same)) == 1
    assert len(plan(same, vantage_points=("WEU", "ENAM", "SEAS"))) == 3
    different_path = target(monitor(0, path="/health"), pool="c")
    assert len(plan([*same, different_path])) == 2


def test_jobs_for_config_uses_book_targets() -> None:
    config = Config(
        monitors=(Monitor(id="m", type="https", header={"Host": ("app.test",)}),),
        pools=(
            Pool(
                name="a",
                monitor="m",
                origins=(
                    Origin(name="x", address="t.test"),
                    Origin(name="off", address="t.test", enabled=False),
                ),
            ),
            Pool(name="b", monitor="m", origins=(Origin(name="y", address="t.test"),)),
            Pool(name="c", origins=(Origin(name="z", address="t.test"),)),
        ),
        connect_to={"t.test:443": "127.0.0.1:9"},
        engine=EngineSettings(vantage_points=("v1", "v2"), probe_user_agent="cloudflare"),
    )
    planned = jobs_for_config(config, HealthBook(config).targets())
    assert [(j.vantage, j.fanout) for j in planned] == [
        ("v1", (("a", "x"), ("b", "y"))),
        ("v2", (("a", "x"), ("b", "y"))),
    ]
    assert planned[0].probe.dial_port == 9
    assert planned[0].probe.user_agent.endswith("pool-id: a)")
