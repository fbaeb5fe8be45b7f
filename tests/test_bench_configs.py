"""The configurations the benchmarks generate are valid ones.

The benchmarks are not run by the suite (they measure, they do not assert), so a rule added
to the configuration checks could break one unnoticed: ``bench/simulate.py`` stopped at its
first scenario once tunnel endpoints required ``proxied: true``.  Building and loading what
each benchmark would run costs milliseconds and catches that here.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lb.config import read_text
from lb.config.loader import load_config
from lb.sim import parse_scenario

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    # bench/proxy.py picks its ports at import and hands them to its children through the
    # environment; this removes them again after the test.
    monkeypatch.delenv("TUNNEL_LB_BENCH_PORTS", raising=False)
    sys.modules.pop(name, None)
    return importlib.import_module(name)


@pytest.mark.parametrize("affinity", ["none", "cookie"])
@pytest.mark.parametrize("quick", [True, False])
def test_simulate_bench_scenarios_load(
    monkeypatch: pytest.MonkeyPatch, affinity: str, quick: bool
) -> None:
    bench = _bench("simulate", monkeypatch)
    scale = 0.1 if quick else 1.0
    for params in (
        bench._params(4, 5, 200_000, 20 * scale, 10, affinity),
        bench._params(10, 5, 1000, 3600 * scale, 600 * scale, affinity),
    ):
        node, problems = read_text(bench.scenario_text(**params), "<bench>.yaml")
        assert node is not None and problems == []
        scenario = parse_scenario(node, "<bench>.yaml")
        assert len(scenario.config.pools) == params["pools"]


@pytest.mark.parametrize("workers", [1, 2])
def test_proxy_bench_run_config_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int
) -> None:
    bench = _bench("proxy", monkeypatch)
    loaded = load_config([bench.run_config(tmp_path, 18000, workers)])
    assert loaded.config.engine.workers == workers
    assert [o.name for o in loaded.config.pools[0].origins] == ["e0", "e1"]
