"""The generic dataclass-driven parser: types, null, metadata, unknown keys."""

from __future__ import annotations

import pytest
from config_helpers import BASE, errors, load


def pool_line(fields: str) -> str:
    """BASE with pool ``a`` (line 4) given extra fields."""
    return BASE.replace(
        "  - {name: a, monitor: m, origins: [{name: o1, address: 10.0.0.1}]}",
        f"  - {{name: a, monitor: m, origins: [{{name: o1, address: 10.0.0.1}}], {fields}}}",
    )


def origin_line(fields: str) -> str:
    """BASE with origin ``o1`` of pool ``a`` (line 4) given extra fields."""
    return BASE.replace("address: 10.0.0.1}", f"address: 10.0.0.1, {fields}}}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            origin_line("weight: 1.5"),
            "lb.yaml:4: pools[0].origins[0].weight: must be between 0 and 1, got 1.5",
            id="range",
        ),
        pytest.param(
            origin_line("wieght: 0.5"),
            'lb.yaml:4: pools[0].origins[0].wieght: unknown key (did you mean "weight"?)',
            id="unknown-key-did-you-mean",
        ),
        pytest.param(
            origin_line("Weight: 0.5"),
            'lb.yaml:4: pools[0].origins[0].Weight: unknown key (did you mean "weight"?)',
            id="unknown-key-case",
        ),
        pytest.param(
            origin_line("colour: blue"),
            "lb.yaml:4: pools[0].origins[0].colour: unknown key",
            id="unknown-key-no-suggestion",
        ),
        pytest.param(
            pool_line("minimum_origins: true"),
            "lb.yaml:4: pools[0].minimum_origins: expected an integer, got a boolean (true)",
            id="bool-is-not-int",
        ),
        pytest.param(
            pool_line("minimum_origins: 1.5"),
            "lb.yaml:4: pools[0].minimum_origins: expected an integer, got a number (1.5)",
            id="float-is-not-int",
        ),
        pytest.param(
            origin_line("weight: '0.5'"),
            'lb.yaml:4: pools[0].origins[0].weight: expected a number, got a string ("0.5")',
            id="quoted-number-is-a-string",
        ),
        pytest.param(
            origin_line("weight: .nan"),
            "lb.yaml:4: pools[0].origins[0].weight: expected a number, got a number (nan)",
            id="nan",
        ),
        pytest.param(
            pool_line("enabled: 'yes'"),
            'lb.yaml:4: pools[0].enabled: expected true or false, got a string ("yes")',
            id="string-is-not-bool",
        ),
        pytest.param(
            pool_line("origin_steering: {policy: rnd}"),
            'lb.yaml:4: pools[0].origin_steering.policy: must be one of "random", "hash", '
            '"least_outstanding_requests", "least_connections"; got "rnd" '
            '(did you mean "random"?)',
            id="choices",
        ),
        pytest.param(
            pool_line("check_regions: [WEU, MARS]"),
            'lb.yaml:4: pools[0].check_regions[1]: must be one of "WNAM", "ENAM", "WEU", "EEU", '
            '"NSAM", "SSAM", "OC", "ME", "NAF", "SAF", "SAS", "SEAS", "NEAS", "ALL_REGIONS"; '
            'got "MARS"',
            id="choices-on-list-items",
        ),
        pytest.param(
            BASE.replace("origins: [{name: o1, address: 10.0.0.1}]", "origins: {name: o1}"),
            "lb.yaml:4: pools[0].origins: expected a list, got a mapping",
            id="list-expected",
        ),
        pytest.param(
            pool_line("origin_steering: random"),
            'lb.yaml:4: pools[0].origin_steering: expected a mapping, got a string ("random")',
            id="mapping-expected",
        ),
        pytest.param(
            origin_line("header: {Host: {a: b}}"),
            "lb.yaml:4: pools[0].origins[0].header.Host: expected a list, got a mapping",
            id="header-value-type",
        ),
        pytest.param(
            BASE.replace("{name: a, ", "{id: a, "),
            'lb.yaml:4: pools[0]: missing required key "name"',
            id="required-missing",
        ),
        pytest.param(
            BASE.replace("{name: o1, address: 10.0.0.1}", "{name: o1}"),
            'lb.yaml:4: pools[0].origins[0]: missing required key "address"',
            id="required-missing-in-list-item",
        ),
        pytest.param(
            BASE.replace("{name: a, ", "{id: a, name: null, "),
            'lb.yaml:4: pools[0]: missing required key "name"',
            id="required-null",
        ),
        pytest.param(
            BASE + "engine: {zero_downtime_failover_codes: [521, 404]}\n",
            "lb.yaml:8: engine.zero_downtime_failover_codes[1]: must be between 500 and 599, "
            "got 404",
            id="range-on-list-items",
        ),
        pytest.param(
            BASE.replace(
                "[a, b], fallback_pool: b}",
                "[a, b], fallback_pool: b, random_steering: {pool_weights: {a: 2}}}",
            ),
            "lb.yaml:7: load_balancers[0].random_steering.pool_weights.a: must be between 0 "
            "and 1, got 2",
            id="range-on-mapping-values",
        ),
    ],
)
def test_parse_errors(text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_null_means_default() -> None:
    config = load(origin_line("weight: null, header: null")).config
    origin = config.pool("a").origins[0]
    assert origin.weight == 1.0
    assert origin.header == {}


def test_integers_are_accepted_as_floats() -> None:
    weight = load(origin_line("weight: 0")).config.pool("a").origins[0].weight
    assert weight == 0.0
    assert isinstance(weight, float)


def test_single_header_value_is_a_one_element_list() -> None:
    config = load(origin_line("header: {Host: app.example.com}")).config
    assert config.pool("a").origins[0].header == {"Host": ("app.example.com",)}


@pytest.mark.parametrize(
    ("fields", "attribute", "value"),
    [
        ("expected_codes: 200", "expected_codes", "200"),
        ("description: 2024", "description", "2024"),
        ("description: off", "description", "off"),
        ("description: 1.10", "description", "1.10"),
    ],
)
def test_unquoted_yaml_scalars_are_read_as_written_where_strings_are_expected(
    fields: str, attribute: str, value: str
) -> None:
    text = BASE.replace("{id: m, type: https,", f"{{id: m, {fields}, type: https,")
    assert getattr(load(text).config.monitor("m"), attribute) == value


def test_country_code_no_is_not_false() -> None:
    text = BASE.replace("fallback_pool: b}", "fallback_pool: b, country_pools: {NO: [a]}}")
    assert load(text).config.load_balancers[0].country_pools == {"NO": ("a",)}


def test_read_only_fields_are_ignored() -> None:
    text = BASE.replace(
        "{name: a, ", "{name: a, created_on: 2024-01-01T00:00:00Z, disabled_at: null, healthy: "
    ).replace("healthy: monitor", "healthy: true, monitor")
    pool = load(text).config.pool("a")
    assert not hasattr(pool, "created_on")


def test_free_form_fields_keep_plain_data() -> None:
    text = pool_line("notification_filter: {pool: {disable: false, healthy: null}}")
    config = load(text).config
    assert config.pool("a").notification_filter == {"pool": {"disable": False, "healthy": None}}


def test_nested_dataclasses_and_tuples_are_built() -> None:
    text = BASE + "engine: {listen: [{address: '::1', port: 0}], limits: {idle_timeout: 5}}\n"
    engine = load(text).config.engine
    assert engine.listen[0].address == "::1"
    assert engine.listen[0].port == 0
    assert engine.limits.idle_timeout == 5.0
