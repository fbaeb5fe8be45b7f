"""File shapes (our sections, Cloudflare API JSON), merging, references, syntax errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from config_helpers import BASE, T1, errors, load

from lb.config import ConfigError, load_config, load_config_text

MONITOR = {"id": "f1aba936b94213e5b8dca0c0dbf1f9cc", "type": "https", "interval": 60}
POOL = {
    "id": "17b5962d775c646f3f9725cbc7a53df4",
    "created_on": "2024-03-01T09:15:02.000000Z",
    "modified_on": "2025-11-20T16:05:41.000000Z",
    "name": "app-eu",
    "monitor": MONITOR["id"],
    "disabled_at": None,
    "origins": [
        {
            "name": "fra",
            "address": f"{T1}.cfargotunnel.com",
            "header": {"Host": ["app.example.com"]},
            "disabled_at": None,
        }
    ],
}
LB = {
    "id": "699d98642c564d2e855e9661899b7252",
    "name": "app.example.com",
    "zone_name": "example.com",
    "proxied": True,
    "default_pools": [POOL["id"]],
    "fallback_pool": POOL["id"],
}


def envelope(result: object, **extra: object) -> str:
    body = {"result": result, "success": True, "errors": [], "messages": [], **extra}
    return json.dumps(body, indent=2)


# --------------------------------------------------------------------------- Cloudflare JSON


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(json.dumps([MONITOR, POOL, LB]), id="list-of-objects"),
        pytest.param(
            envelope([MONITOR, POOL, LB], result_info={"page": 1, "count": 3}),
            id="list-envelope",
        ),
    ],
)
def test_cloudflare_json_loads_as_is(text: str) -> None:
    config = load(text, "export.json").config
    assert config.monitor(MONITOR["id"]).type == "https"
    pool = config.pool("app-eu")
    assert pool.id == POOL["id"]
    assert pool.origins[0].tunnel_id == T1
    # pool references by id are resolved to names
    assert config.load_balancers[0].default_pools == ("app-eu",)
    assert config.load_balancers[0].fallback_pool == "app-eu"
    assert config.load_balancers[0].id == LB["id"]


def test_single_objects_and_single_envelopes_merge(tmp_path: Path) -> None:
    files = {
        "monitor.json": json.dumps(MONITOR),
        "pool.json": envelope(POOL),
        "lb.json": json.dumps({"result": LB}),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    config = load_config([tmp_path / name for name in files]).config
    assert [p.name for p in config.pools] == ["app-eu"]
    assert config.load_balancers[0].default_pools == ("app-eu",)
    assert config.source == tuple(str(tmp_path / name) for name in files)


def test_json_problems_carry_lines_and_api_paths() -> None:
    bad_pool = {**POOL, "origins": [{**POOL["origins"][0], "weight": 1.5}]}
    text = envelope([MONITOR, bad_pool])
    line = next(i for i, t in enumerate(text.splitlines(), 1) if '"weight"' in t)
    assert errors(text, "pools.json") == [
        f"pools.json:{line}: result[1].origins[0].weight: must be between 0 and 1, got 1.5"
    ]


def test_json_with_tab_indentation_and_exponents() -> None:
    text = json.dumps({**MONITOR, "timeout": 5e0}, indent="\t")
    config = load(text, "monitor.json").config
    assert config.monitors[0].timeout == 5.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '{"result": [], "success": false, "errors": [{"code": 1000, "message": "nope"}]}',
            "api.json:1: success: the API call failed: [{'code': 1000, 'message': 'nope'}]",
            id="failed-call",
        ),
        pytest.param(
            '{"result": [], "sucess": true}',
            'api.json:1: sucess: unknown key (did you mean "success"?)',
            id="envelope-typo",
        ),
        pytest.param(
            '[{"name": "x"}]',
            "api.json:1: [0]: cannot tell whether this is a monitor, a monitor group, a pool or "
            "a load balancer (a pool has `origins`, a load balancer `default_pools`, a monitor "
            "`type`, a monitor group `members`)",
            id="unknown-kind",
        ),
        pytest.param(
            '{"result": 3}',
            "api.json:1: result: expected a list or a mapping, got a number (3)",
            id="result-scalar",
        ),
        pytest.param(
            '{"pools": [], "a": 1,\n "b": }',
            "api.json:2: JSON error: Expecting value",
            id="json-syntax",
        ),
    ],
)
def test_cloudflare_json_problems(text: str, expected: str) -> None:
    assert errors(text, "api.json") == [expected]


# --------------------------------------------------------------------------- file problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "pools:\n  - name: a\n    origins: [\n",
            "lb.yaml:4: YAML syntax error: expected the node content, but found '<stream end>'",
            id="yaml-syntax",
        ),
        pytest.param(
            "pools:\n  - {name: a\n",
            "lb.yaml:3: YAML syntax error: expected ',' or '}', but got '<stream end>'",
            id="yaml-unclosed-flow",
        ),
        pytest.param(
            "just a string\n",
            "lb.yaml:1: the top level must be a mapping of sections (monitors, pools, "
            'load_balancers, ...) or Cloudflare API objects, got a string ("just a string")',
            id="top-level-scalar",
        ),
        pytest.param(
            "pool: []\n",
            'lb.yaml:1: pool: unknown key (did you mean "pools"?)',
            id="section-typo",
        ),
        pytest.param(
            "pools: {a: 1}\n",
            "lb.yaml:1: pools: expected a list, got a mapping",
            id="section-type",
        ),
        pytest.param(
            "engine: {}\nengine: {}\n",
            "lb.yaml:2: engine: duplicate key (first at line 1)",
            id="duplicate-yaml-key",
        ),
        pytest.param(
            "pools:\n  - name: a\n    origins:\n      - name: o1\n        name: o2\n",
            "lb.yaml:5: pools[0].origins[0].name: duplicate key (first at line 4)",
            id="duplicate-nested-yaml-key",
        ),
        pytest.param(
            "connect_to: {a.example:443: x:1, a.example:443: y:1}\n",
            'lb.yaml:1: connect_to["a.example:443"]: duplicate key (first at line 1)',
            id="duplicate-yaml-key-quoted-in-path",
        ),
        pytest.param(
            "a: &x [*x]\n",
            "lb.yaml:1: a[0]: an alias refers to itself",
            id="recursive-alias",
        ),
    ],
)
def test_file_problems(text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_missing_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([tmp_path / "nope.yaml"])
    assert [str(p) for p in info.value.problems] == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_empty_file_warns() -> None:
    result = load_config_text("# nothing here\n", "empty.yaml")
    assert [str(w) for w in result.warnings] == ["empty.yaml: the file is empty"]


def test_yaml_anchors_and_merge_keys() -> None:
    text = BASE.replace(
        "{name: o1, address: 10.0.0.1}", "&o {name: o1, address: 10.0.0.1, weight: 0.5}"
    ).replace("{name: o1, address: 10.0.0.2}", "{<<: *o, address: 10.0.0.2}")
    origin = load(text).config.pool("b").origins[0]
    assert (origin.name, origin.address, origin.weight) == ("o1", "10.0.0.2", 0.5)


# --------------------------------------------------------------------------- merging


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_list_sections_concatenate_and_problems_name_their_file(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", BASE)
    second = write(
        tmp_path,
        "b.yaml",
        "pools:\n  - {name: c, origins: [{name: o, address: 10.0.0.9, weight: 2}]}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config([first, second])
    assert [str(p) for p in info.value.problems] == [
        f"{second}:2: pools[0].origins[0].weight: must be between 0 and 1, got 2"
    ]
    second.write_text("pools:\n  - {name: c, origins: [{name: o, address: 10.0.0.9}]}\n")
    assert [p.name for p in load_config([first, second]).config.pools] == ["a", "b", "c"]


def test_mapping_sections_merge_by_key_and_duplicates_are_errors(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", BASE + "engine: {admin: '127.0.0.1:1', workers: 2}\n")
    second = write(tmp_path, "b.yaml", "engine:\n  access_log: true\n  workers: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config([first, second])
    assert [str(p) for p in info.value.problems] == [
        f'{second}:3: engine.workers: duplicate engine entry "workers" (first at {first}:8)'
    ]
    second.write_text("engine:\n  access_log: true\n  limits: {idle_timeout: 9}\n")
    engine = load_config([first, second]).config.engine
    assert (engine.admin, engine.workers, engine.access_log) == ("127.0.0.1:1", 2, True)
    assert engine.limits.idle_timeout == 9


def test_engine_problems_point_at_the_file_that_set_the_key(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", BASE + "engine: {workers: 2}\n")
    second = write(tmp_path, "b.yaml", "\n\nengine:\n  drain_timeout: -1\n  wokers: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config([first, second])
    assert [str(p) for p in info.value.problems] == [
        f"{second}:4: engine.drain_timeout: must be between 0 and 3600, got -1",
        f'{second}:5: engine.wokers: unknown key (did you mean "workers"?)',
    ]


def test_file_names_are_relative_to_the_file_that_names_them(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    first = write(tmp_path / "etc", "lb.yaml", BASE + "engine: {upstream_ca: ca/bundle.pem}\n")
    second = write(
        tmp_path,
        "listen.yaml",
        "engine:\n  listen:\n    - port: 8443\n      certificate: certs/lb.pem\n"
        "      key: /abs/lb.key\n      certificates: [{certificate: a.pem, key: a.key}]\n",
    )
    engine = load_config([first, second]).config.engine
    assert engine.upstream_ca == str(tmp_path / "etc" / "ca" / "bundle.pem")
    (listener,) = engine.listen
    assert (listener.certificate, listener.key) == (str(tmp_path / "certs/lb.pem"), "/abs/lb.key")
    pair = listener.certificates[0]
    assert (pair.certificate, pair.key) == (str(tmp_path / "a.pem"), str(tmp_path / "a.key"))
    # Empty means "not set", and text without a directory stays as written.
    assert load_config([write(tmp_path, "c.yaml", BASE)]).config.engine.upstream_ca == ""
    text = BASE + "engine: {upstream_ca: ca.pem}\n"
    assert load_config_text(text, "lb.yaml").config.engine.upstream_ca == "ca.pem"


def test_datacenters_extend_and_override_the_builtin_table() -> None:
    text = BASE + "datacenters:\n  FRA: {region: EEU}\n  LAB1: {region: WEU, country: DE}\n"
    datacenters = load(text).config.datacenters
    assert datacenters["FRA"].region == "EEU"
    assert datacenters["FRA"].latitude is None  # whole entries are replaced
    assert datacenters["LAB1"].country == "DE"
    assert datacenters["AMS"].region == "WEU"


def test_builtin_datacenters_cover_every_region() -> None:
    datacenters = load(BASE).config.datacenters
    assert len(datacenters) >= 40
    regions = {dc.region for dc in datacenters.values()}
    assert regions == {
        "WNAM", "ENAM", "WEU", "EEU", "NSAM", "SSAM", "OC", "ME", "NAF", "SAF", "SAS", "SEAS",
        "NEAS",
    }  # fmt: skip
    assert all(dc.latitude is not None for dc in datacenters.values())


# --------------------------------------------------------------------------- references


def test_references_by_id_or_name_resolve_to_names() -> None:
    text = BASE.replace("{name: a, ", "{id: 9a1c0f6d, name: a, ").replace(
        "default_pools: [a, b], fallback_pool: b}",
        "default_pools: [9a1c0f6d, b], fallback_pool: 9a1c0f6d, steering_policy: random, "
        "region_pools: {WEU: [9a1c0f6d]}, pop_pools: {FRA: [b, a]}, "
        "random_steering: {pool_weights: {9a1c0f6d: 0.2, b: 0.8}}}",
    )
    result = load(text)
    lb = result.config.load_balancers[0]
    assert lb.default_pools == ("a", "b")
    assert lb.fallback_pool == "a"
    assert lb.region_pools == {"WEU": ("a",)}
    assert lb.pop_pools == {"FRA": ("b", "a")}
    assert lb.random_steering.pool_weights == {"a": 0.2, "b": 0.8}
    assert lb.id == "app.example.com"
    assert [p.id for p in result.config.pools] == ["9a1c0f6d", "b"]


def test_a_pool_weight_given_by_id_and_by_name_is_a_duplicate() -> None:
    text = BASE.replace("{name: a, ", "{id: x1, name: a, ").replace(
        "fallback_pool: b}", "fallback_pool: b, random_steering: {pool_weights: {x1: 1, a: 1}}}"
    )
    assert errors(text) == [
        'lb.yaml:7: load_balancers[0].random_steering.pool_weights.a: duplicate pool weight "a" '
        "(first at lb.yaml:7)"
    ]


def test_monitor_ids_must_be_unique() -> None:
    text = BASE.replace("monitors:\n", "monitors:\n  - {id: m, type: http}\n")
    assert errors(text) == [
        'lb.yaml:3: monitors[1].id: duplicate monitor id "m" (first at lb.yaml:2)'
    ]


def test_a_broken_pool_is_not_reported_again_as_unknown() -> None:
    text = BASE.replace("{name: o1, address: 10.0.0.2}", "{name: o1}")
    assert errors(text) == ['lb.yaml:5: pools[1].origins[0]: missing required key "address"']
