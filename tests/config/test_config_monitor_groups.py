"""Monitor groups (R16): loaded from our format and from Cloudflare's API shape, and checked.

Each error case edits one line of a valid configuration; problems are exact (file, line,
dotted path and message).
"""

from __future__ import annotations

import json

import pytest
from config_helpers import T1, errors, load, warnings

from lb.config.model import MonitorGroupMember

GROUPED = """\
monitors:
  - {id: api, type: https, path: /api, header: {Host: [app.example.com]}}
  - {id: login, type: https, path: /login, header: {Host: [app.example.com]}}
monitor_groups:
  - {id: g, description: both, members: [{monitor_id: api}, {monitor_id: login, must_be_healthy: true}]}
pools:
  - {name: a, monitor_group: g, origins: [{name: o1, address: 10.0.0.1}]}
load_balancers:
  - {name: app.example.com, proxied: true, default_pools: [a], fallback_pool: a}
"""  # noqa: E501


def edit(number: int, text: str) -> str:
    lines = GROUPED.splitlines()
    lines[number - 1] = text
    return "\n".join(lines) + "\n"


def test_a_group_loads_with_its_members_and_defaults() -> None:
    config = load(GROUPED).config
    group = config.monitor_group("g")
    assert group.description == "both"
    assert group.members == (
        MonitorGroupMember(monitor_id="api"),
        MonitorGroupMember(monitor_id="login", must_be_healthy=True),
    )
    pool = config.pool("a")
    assert pool.monitored and pool.monitor is None
    assert [m.id for m in config.pool_monitors(pool)] == ["api", "login"]


def test_disabled_members_do_not_probe() -> None:
    text = edit(
        5,
        "  - {id: g, members: [{monitor_id: api}, {monitor_id: login, enabled: false}]}",
    )
    config = load(text).config
    assert [m.id for m in config.pool_monitors(config.pool("a"))] == ["api"]


G = "  - {id: g, members: "


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            (5, G + "[{monitor_id: api}, {monitor_id: logn}]}"),
            'lb.yaml:5: monitor_groups[0].members[1].monitor_id: unknown monitor "logn" '
            '(did you mean "login"?)',
            id="unknown-member-monitor",
        ),
        pytest.param(
            (5, G + "[]}"),
            "lb.yaml:5: monitor_groups[0].members: a monitor group needs at least one member",
            id="empty-group",
        ),
        pytest.param(
            (
                5,
                G + "[{monitor_id: api, enabled: false}, {monitor_id: login, "
                "monitoring_only: true}]}",
            ),
            "lb.yaml:5: monitor_groups[0].members: no enabled member that is not "
            "monitoring_only: nothing would decide health",
            id="nobody-votes",
        ),
        pytest.param(
            (5, G + "[{monitor_id: api}, {monitor_id: api}]}"),
            "lb.yaml:5: monitor_groups[0].members[1].monitor_id: duplicate member monitor_id "
            '"api" (first at lb.yaml:5)',
            id="member-twice",
        ),
        pytest.param(
            (7, "  - {name: a, monitor_group: gg, origins: [{name: o1, address: 10.0.0.1}]}"),
            'lb.yaml:7: pools[0].monitor_group: unknown monitor group "gg" (did you mean "g"?)',
            id="unknown-group",
        ),
        pytest.param(
            (
                7,
                "  - {name: a, monitor: api, monitor_group: g, origins: [{name: o1, "
                "address: 10.0.0.1}]}",
            ),
            "lb.yaml:7: pools[0].monitor_group: a pool takes either `monitor` or "
            "`monitor_group`, not both",
            id="monitor-and-group",
        ),
        pytest.param(
            (2, "  - {id: api, type: tcp, port: 443}"),
            'lb.yaml:7: pools[0].monitor_group: monitor group "g" has a tcp member, which '
            "cannot check tunnel endpoints; use https monitors with a Host header",
            id="tcp-member-on-tunnels",
        ),
    ],
)
def test_group_errors(line: tuple[int, str], expected: str) -> None:
    text = edit(*line)
    if line[0] == 2:  # the tcp case needs a tunnel endpoint
        tunnel = (
            f"{{name: o1, address: {T1}.cfargotunnel.com, header: {{Host: [app.example.com]}}}}"
        )
        text = text.replace("{name: o1, address: 10.0.0.1}", tunnel)
    assert errors(text) == [expected]


def test_a_misspelt_member_key_is_named() -> None:
    assert errors(edit(5, G + "[{monitor: api}]}")) == [
        'lb.yaml:5: monitor_groups[0].members[0].monitor: unknown key (did you mean "monitor_id"?)',
        'lb.yaml:5: monitor_groups[0].members[0]: missing required key "monitor_id"',
    ]


def test_monitoring_only_and_must_be_healthy_warns() -> None:
    text = edit(
        5,
        G + "[{monitor_id: api}, {monitor_id: login, monitoring_only: true, "
        "must_be_healthy: true}]}",
    )
    assert warnings(text) == [
        "lb.yaml:5: monitor_groups[0].members[1].must_be_healthy: a monitoring_only member "
        "never affects health: must_be_healthy is ignored"
    ]


def test_cloudflare_api_export_with_a_monitor_group_loads() -> None:
    """The shape of ``GET /accounts/{id}/load_balancers/monitor_groups`` with pools using it."""
    group = {
        "id": "5a7f1c2e9b3d4e6f8a0b1c2d3e4f5a6b",
        "description": "API and login",
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "members": [
            {
                "monitor_id": "f1aba936b94213e5b8dca0c0dbf1f9cc",
                "enabled": True,
                "monitoring_only": False,
                "must_be_healthy": True,
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
            }
        ],
    }
    monitor = {"id": "f1aba936b94213e5b8dca0c0dbf1f9cc", "type": "https", "interval": 60}
    pool = {
        "id": "17b5962d775c646f3f9725cbc7a53df4",
        "name": "p",
        "monitor": None,
        "monitor_group": group["id"],
        "origins": [{"name": "o", "address": "10.0.0.1"}],
    }
    text = json.dumps({"result": [monitor, group, pool], "success": True, "errors": []})
    config = load(text, "api.json").config
    assert config.monitor_group(str(group["id"])).members[0].must_be_healthy
    assert config.pool("p").monitor_group == group["id"]
