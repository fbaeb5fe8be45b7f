"""Small scenario documents written in tests, so each test shows the YAML it is about."""

from __future__ import annotations

import textwrap
from pathlib import Path

from lb.sim import Scenario, load_scenario

TUNNEL_A = "aaaaaaaa-0000-4000-8000-00000000000a"
TUNNEL_B = "bbbbbbbb-0000-4000-8000-00000000000b"

CONFIG = f"""
monitors:
  - {{id: app, type: https, interval: 10, timeout: 2, retries: 0,
     header: {{Host: [app.example.com]}}}}
pools:
  - name: main
    monitor: app
    origins:
      - {{name: a, address: {TUNNEL_A}.cfargotunnel.com, header: {{Host: [app.example.com]}}}}
      - {{name: b, address: {TUNNEL_B}.cfargotunnel.com, header: {{Host: [app.example.com]}}}}
load_balancers:
  - {{name: app.example.com, proxied: true, default_pools: [main], fallback_pool: main}}
tunnels:
  {TUNNEL_A}:
    name: ta
    replicas: [{{name: r1, datacenters: [FRA]}}, {{name: r2, datacenters: [IAD]}}]
  {TUNNEL_B}:
    name: tb
    replicas: [{{name: r1, datacenters: [FRA]}}]
"""


def write(tmp_path: Path, body: str, *, config: str = CONFIG, name: str = "s.yaml") -> Path:
    """Write ``config`` as ``lb.yaml`` and the scenario ``body`` (dedented) next to it."""
    (tmp_path / "lb.yaml").write_text(textwrap.dedent(config))
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def scenario(tmp_path: Path, body: str, **kw: str) -> Scenario:
    """:func:`write` then :func:`lb.sim.load_scenario`."""
    return load_scenario(write(tmp_path, body, **kw))
