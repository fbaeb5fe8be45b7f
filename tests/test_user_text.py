"""What users read says what a feature is, never an internal rule number ("R42"): the
``/metrics`` HELP strings and ``explain`` traces (the demo banner: tests/test_demo.py).
Rule numbers stay in code comments and tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from lb.cli import main
from lb.config.loader import load_config
from lb.engine import Engine
from lb.metrics import Metrics

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RULE_NUMBER = re.compile(r"\bR\d{1,2}\b")


def test_metrics_help_names_no_rule_numbers() -> None:
    metrics = Metrics()
    metrics.attach(Engine(load_config([CONFIGS / "quickstart.yaml"]).config))
    helps = [
        line
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line.startswith("# HELP")
    ]
    assert helps
    assert [line for line in helps if RULE_NUMBER.search(line)] == []


@pytest.mark.parametrize(
    "args",
    [
        ["geo.yaml", "--host", "geo.localhost", "--datacenter", "SIN", "--down", "apac/sin"],
        ["geo.yaml", "--host", "geo.localhost", "--down", "apac/sin", "--down", "us/iad"],
        ["affinity.yaml", "--host", "api.localhost", "--client-ip", "192.0.2.1"],
        ["affinity.yaml", "--host", "shop.localhost", "--client-ip", "192.0.2.1"],
        ["rules.yaml", "--host", "rules.localhost", "--path", "/admin"],
        ["rules.yaml", "--host", "sets.localhost", "--datacenter", "FRA"],
        ["weighted.yaml", "--host", "weighted.localhost", "--json"],
    ],
)
def test_explain_traces_name_no_rule_numbers(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    main(["explain", str(CONFIGS / args[0]), *args[1:]])
    out, err = capsys.readouterr()
    assert out
    assert RULE_NUMBER.findall(out + err) == []
