"""``tunnel-lb explain`` on a monitor group export (R16): one member down, and what the group
makes of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lb.cli import main

EXPORT = sorted(
    str(p)
    for p in (
        Path(__file__).resolve().parent.parent / "configs" / "cloudflare-monitor-groups"
    ).glob("*.json")
)
HOST = "api.example.com"
GATEWAY = "0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"
LOGIN = "1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a"  # must_be_healthy
SEARCH = "2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b"  # monitoring_only


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["explain", *EXPORT, "--host", HOST, *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("member", "pool", "health"),
    [
        pytest.param(GATEWAY, "api-primary", "healthy", id="one-of-two-is-no-majority"),
        pytest.param(LOGIN, "api-backup", "unhealthy", id="must-be-healthy-decides"),
        pytest.param(SEARCH, "api-primary", "healthy", id="monitoring-only-never-counts"),
    ],
)
def test_r16_one_member_down(
    capsys: pytest.CaptureFixture[str], member: str, pool: str, health: str
) -> None:
    code, out, err = explain(capsys, "--down", f"api-primary/tunnel-fra/{member}")
    assert (code, err) == (0, "")
    assert out.startswith(f"{HOST} -> pool {pool}, ")
    line = next(x for x in out.splitlines() if x.startswith("monitor group of "))
    assert line.startswith(f"monitor group of api-primary/tunnel-fra: {health} (")
    assert f"{member} unhealthy" in line


def test_r16_json_lists_each_member(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, "--json", "--down", f"api-primary/tunnel-fra/{LOGIN}")
    assert code == 0
    groups = json.loads(out)["monitor_groups"]
    assert groups["api-primary/tunnel-fra"] == {
        "health": "unhealthy",
        "members": {GATEWAY: "healthy", LOGIN: "unhealthy", SEARCH: "healthy"},
    }
    assert groups["api-backup/tunnel-iad"]["health"] == "healthy"


def test_r16_unknown_member_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = explain(capsys, "--down", "api-primary/tunnel-fra/nope")
    assert code == 2
    assert err == (
        "error: --down api-primary/tunnel-fra/nope: no monitored endpoint of that name "
        "(nor a monitor group member)\n"
    )
