"""``tunnel-lb explain``: the decision and its trace, from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lb.cli import main

GEO = str(Path(__file__).resolve().parent.parent / "configs" / "geo.yaml")


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["explain", GEO, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_json_names_pool_endpoint_tunnel_and_trace(capsys: pytest.CaptureFixture[str]):
    code, out, _ = explain(capsys, "--host", "geo.localhost", "--datacenter", "SIN", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["load_balancer"] == "geo.localhost"
    assert (doc["pool"], doc["endpoint"]) == ("apac", "sin")
    assert doc["tunnel_id"] == "3c4d5e6f-7a8b-4c9d-8e1f-2a3b4c5d6e7f"
    assert doc["reason"] == "policy"
    assert "candidates from region_pools[SEAS]: ['apac', 'us']" in doc["trace"]


def test_explain_down_moves_to_next_pool_and_says_why(capsys: pytest.CaptureFixture[str]):
    code, out, _ = explain(
        capsys, "--host", "geo.localhost", "--datacenter", "SIN", "--down", "apac/sin"
    )
    assert code == 0
    assert out.startswith("geo.localhost -> pool us, endpoint iad")
    assert "pool apac excluded: critical: 0 healthy < minimum_origins 1" in out


def test_r27_explain_whole_region_down_uses_fallback_not_default_pools(
    capsys: pytest.CaptureFixture[str],
):
    code, out, _ = explain(
        capsys,
        "--host", "geo.localhost", "--datacenter", "AMS", "--json",
        "--down", "eu/ams", "--down", "eu/lhr", "--down", "us/iad",
    )  # fmt: skip
    assert code == 0
    doc = json.loads(out)
    assert (doc["pool"], doc["reason"]) == ("last-resort", "fallback")


def test_explain_unknown_host_is_a_clear_error(capsys: pytest.CaptureFixture[str]):
    code, out, err = explain(capsys, "--host", "nope.example.com")
    assert code == 2
    assert out == ""
    assert "no load balancer answers for host 'nope.example.com' (known: geo.localhost)" in err


def test_explain_unknown_down_endpoint_is_a_clear_error(capsys: pytest.CaptureFixture[str]):
    code, _, err = explain(capsys, "--host", "geo.localhost", "--down", "eu/nope")
    assert code == 2
    assert "--down eu/nope: no monitored endpoint of that name" in err


RULES = str(Path(__file__).resolve().parent.parent / "configs" / "rules.yaml")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--path", "/api/v1/users"], "rules.localhost -> pool api, endpoint api-1"),
        (["--header", "x-canary=1"], "rules.localhost -> pool canary, endpoint canary-1"),
        (["--path", "/maintenance"], "rules.localhost -> fixed response 503 (custom rule)"),
        (["--path", "/"], "rules.localhost -> pool web"),
        (["--host", "sets.localhost", "--datacenter", "IAD"], "sets.localhost -> pool canary"),
    ],
)
def test_explain_applies_custom_rules(
    capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    code = main(["explain", RULES, "--host", "rules.localhost", *args])  # a later --host wins
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.startswith(expected), out


def test_item_03_explain_takes_the_clients_country(capsys: pytest.CaptureFixture[str]):
    base = ("--host", "geo.localhost", "--datacenter", "AMS", "--json")
    code, out, _ = explain(capsys, *base)
    assert code == 0 and json.loads(out)["pool"] == "eu"
    assert "candidates from region_pools[WEU]: ['eu', 'us']" in json.loads(out)["trace"]
    code, out, _ = explain(capsys, *base, "--country", "de")
    trace = json.loads(out)["trace"]
    assert trace[0] == "client country DE (before the data center's)"
    assert "candidates from country_pools[DE]: ['eu']" in trace


def test_explain_ejected_shows_passive_health_in_the_trace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(
        "monitors: [{id: m, type: https, header: {Host: [app.example.com]}}]\n"
        "pools:\n"
        "  - {name: p, monitor: m, origins: [{name: a, address: 10.0.0.1},"
        " {name: b, address: 10.0.0.2}]}\n"
        "load_balancers: [{name: app.example.com, default_pools: [p], fallback_pool: p}]\n"
        "engine: {passive_health: {consecutive_5xx: 3, max_ejection_percent: 50}}\n"
    )
    code = main(["explain", str(config), "--host", "app.example.com", "--ejected", "p/a"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out.startswith("app.example.com -> pool p, endpoint b")
    assert "endpoint p/a: passive health ejected it at 0 (ejection 1)" in out
    # the cap holds: the second endpoint of two at 50 % is not ejected
    code = main(
        [
            "explain",
            str(config),
            "--host",
            "app.example.com",
            "--ejected",
            "p/a",
            "--ejected",
            "p/b",
        ]
    )
    _, err = capsys.readouterr()
    assert code == 2
    assert err == (
        "error: --ejected p/b: not ejected: it is not healthy, or max_ejection_percent of its "
        "pool is out already\n"
    )
    code = main(["explain", GEO, "--host", "geo.localhost", "--ejected", "apac/sin"])
    _, err = capsys.readouterr()
    assert code == 2 and "passive_health does not cover that endpoint" in err
