"""engine.cluster in configuration files: resolution and one-line errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lb.config import ConfigError
from lb.config.loader import load_config

BASE = """\
monitors: [{id: m, type: https}]
pools: [{name: p, monitor: m, origins: [{name: a, address: 10.0.0.1}]}]
load_balancers: [{name: x.example.com, default_pools: [p], fallback_pool: p}]
"""


def load(tmp_path: Path, engine: str) -> object:
    path = tmp_path / "lb.yaml"
    path.write_text(BASE + textwrap.dedent(engine))
    return load_config([path]).config


def test_the_vantage_point_defaults_to_the_datacenter(tmp_path: Path) -> None:
    config = load(tmp_path, "engine:\n  datacenter: FRA\n  cluster: {redis: 'redis://h:6379/0'}\n")
    engine = config.engine  # type: ignore[attr-defined]
    assert engine.vantage_points == ("FRA",)
    assert engine.cluster.vantage == "FRA"
    assert engine.cluster.member_ttl == 6.0


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ("cluster: {redis: 'redis://h'}", "needs a vantage point"),
        ("cluster: {redis: 'h:6379', vantage: v}", "redis://, rediss:// or unix://"),
        ("vantage_points: [a, b]\n  cluster: {redis: 'redis://h', vantage: v}", "probes from"),
        ("workers: 2\n  cluster: {redis: 'redis://h', vantage: v}", "workers > 1"),
        ("cluster: {redis: 'redis://h', vantage: v, heartbeat: 2, heartbeat_ttl: 1}", "longer"),
        ("affinity_secret: a\n  affinity_secret_file: /etc/hostname", "not both"),
        ("affinity_secret_file: /nonexistent/key", "cannot read"),
    ],
)
def test_mistakes_are_one_line_errors(tmp_path: Path, engine: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, f"engine:\n  {engine}\n")
    assert any(message in str(p) for p in exc.value.problems), exc.value.problems
