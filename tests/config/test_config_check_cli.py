"""``tunnel-lb check``: exit codes, text and JSON output, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from config_helpers import BASE

from lb.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path: Path, text: str, name: str = "lb.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_valid_config_prints_summary_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(CONFIGS / "quickstart.yaml")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        f"OK: {CONFIGS / 'quickstart.yaml'} (0 warnings)",
        "load balancers (1):",
        "  app.localhost: off over eu > us, fallback us (proxied)",
        "pools (2):",
        "  eu: 1 endpoint (1 tunnel), random steering, monitor app-https",
        "  us: 1 endpoint (1 tunnel), random steering, monitor app-https",
        "monitors (1):",
        "  app-https: https GET /healthz port of the endpoint Host app.example.com"
        " every 10s, expects 200",
        "tunnels (2):",
        "  6ff42ae2-765d-4adf-8112-31c55c1551ef (app-eu): 2 replicas in AMS, CDG, FRA",
        "  0f3e2d1c-4b5a-4c6d-8e7f-9a0b1c2d3e4f (app-us): 2 replicas in EWR, IAD, ORD",
    ]


def test_warnings_are_printed_but_do_not_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path, BASE.replace("fallback_pool: b}", "fallback_pool: b, steering_policy: geo}")
    )
    assert main(["check", path]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"OK: {path} (1 warning)\n")
    assert err == (
        f"warning: {path}:7: load_balancers[0].steering_policy: geo steering without "
        "region_pools, country_pools or pop_pools: default_pools only\n"
    )


def test_errors_are_printed_one_per_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BASE.replace("address: 10.0.0.1}", "address: 10.0.0.1, weight: 1.5}"))
    missing = str(tmp_path / "missing.yaml")
    assert main(["check", path, missing]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:4: pools[0].origins[0].weight: must be between 0 and 1, got 1.5",
        f"{missing}: no such file",
        "2 errors, 0 warnings",
    ]


def test_json_duplicate_keys_are_refused_with_lines_and_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # json.loads keeps the last of two equal keys without a word; YAML refuses them, and so
    # must JSON: a repeated "address" would silently send traffic elsewhere.
    text = """\
{
  "pools": [
    {"name": "a", "origins": [{"name": "o1", "address": "10.0.0.1",
                               "address": "10.0.0.9"}]},
    {"name": "b", "origins": [{"name": "o1", "address": "10.0.0.2"}]}
  ],
  "load_balancers": [{"name": "app.example.com", "default_pools": ["a"],
                      "fallback_pool": "b"}],
  "engine": {"datacenter": "AMS"},
  "engine": {"datacenter": "FRA"}
}
"""
    path = write(tmp_path, text, "lb.json")
    assert main(["check", path]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}:4: pools[0].origins[0].address: duplicate key (first at line 3)",
        f"{path}:10: engine: duplicate key (first at line 9)",
        "2 errors, 0 warnings",
    ]


def test_json_output_when_valid(capsys: pytest.CaptureFixture[str]) -> None:
    files = ["cloudflare-monitors.json", "cloudflare-api.json", "cloudflare-lb.json"]
    assert main(["check", "--json", *(str(CONFIGS / f) for f in files)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is True
    assert document["errors"] == [] and document["warnings"] == []
    summary = document["summary"]
    assert summary["load_balancers"] == [
        {
            "name": "app.example.com",
            "enabled": True,
            "proxied": True,
            "policy": "proximity",
            "default_pools": ["app-eu", "app-us"],
            "fallback_pool": "app-us",
            "affinity": "cookie",
            "rules": 0,
            "pool_sets": 0,
        }
    ]
    assert [(p["name"], p["endpoints"], p["tunnel_endpoints"]) for p in summary["pools"]] == [
        ("app-eu", 2, 2),
        ("app-us", 1, 1),
    ]
    assert summary["monitors"][0]["expected_codes"] == "2xx"
    assert summary["tunnels"] == []


def test_json_output_when_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "pools:\n  - {name: a, origins: [}\n")
    assert main(["check", "--json", path]) == 2
    document = json.loads(capsys.readouterr().out)
    assert document == {
        "ok": False,
        "errors": [
            {
                "file": path,
                "line": 2,
                "path": "",
                "message": "YAML syntax error: expected the node content, but found '}'",
            }
        ],
        "warnings": [],
        "summary": None,
    }


@pytest.mark.parametrize(
    "text",
    ["", "- 1\n- 2\n", "[1, 2\n", "\x00", "pools: 3\n", "load_balancers: [{}]\n"],
    ids=["empty", "list-of-scalars", "unclosed", "nul", "wrong-type", "empty-object"],
)
def test_never_a_traceback(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", write(tmp_path, text)])
    out, err = capsys.readouterr()
    assert code in (0, 2)
    assert "Traceback" not in out + err


def test_a_cloudflare_export_with_a_monitor_group_passes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """R16: the API's monitors, monitor groups, pools and load balancer, as exported."""
    files = sorted(str(p) for p in (CONFIGS / "cloudflare-monitor-groups").glob("*.json"))
    assert len(files) == 4
    assert main(["check", *files]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("OK: ") and "(0 warnings)" in out.splitlines()[0]
    assert "  api-primary: 1 endpoint (1 tunnel), random steering, monitor group " in out
    assert (
        "monitor groups (1):\n"
        "  3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c: 0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f, "
        "1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a (must be healthy), "
        "2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b (monitoring only)\n"
    ) in out
    assert main(["check", "--json", *files]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert [p["monitor_group"] for p in summary["pools"]] == [
        "3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c"
    ] * 2
