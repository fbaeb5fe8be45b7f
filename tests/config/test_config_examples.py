"""Every example in configs/ (not scenarios/) loads without errors or warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from lb.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

GROUPS = [
    ("quickstart.yaml",),
    ("geo.yaml",),
    ("affinity.yaml",),
    ("weighted.yaml",),
    ("https.yaml",),
    ("rules.yaml",),
    # Cloudflare API exports: pools refer to the monitor by id, the load balancer to pools.
    ("cloudflare-monitors.json", "cloudflare-api.json", "cloudflare-lb.json"),
]
"""Files that are loaded together; each example belongs to exactly one group."""


def test_every_example_is_covered() -> None:
    on_disk = {p.name for p in CONFIGS.iterdir() if p.suffix in (".yaml", ".yml", ".json")}
    covered = [name for group in GROUPS for name in group]
    assert sorted(covered) == sorted(on_disk)


@pytest.mark.parametrize("group", GROUPS, ids="+".join)
def test_example_is_valid(group: tuple[str, ...]) -> None:
    result = load_config([CONFIGS / name for name in group])
    assert result.warnings == []
    assert result.config.load_balancers


def test_quickstart_shape() -> None:
    config = load_config([CONFIGS / "quickstart.yaml"]).config
    (lb,) = config.load_balancers
    assert (lb.name, lb.default_pools, lb.fallback_pool) == ("app.localhost", ("eu", "us"), "us")
    tunnels = [o.tunnel_id for p in config.pools for o in p.origins]
    assert all(tunnels) and len(set(tunnels)) == 2
    assert all(o.host_header == "app.example.com" for p in config.pools for o in p.origins)
    assert sorted(config.connect_to.values()) == ["127.0.0.1:18443", "127.0.0.1:18444"]
    assert {dc for t in config.tunnels for dc in t.datacenters} >= {"FRA", "IAD"}
    assert (config.engine.listen[0].port, config.engine.admin) == (8080, "127.0.0.1:9100")
    assert config.monitors[0].interval == 10
    assert config.monitors[0].host_header == "app.example.com"
