"""R48 table tests: cloudflared's ingress matching, as a pure function."""

from __future__ import annotations

import pytest

from lb.connector.ingress import (
    HelloWorld,
    HttpStatus,
    IngressRule,
    OriginService,
    RuleError,
    UnixService,
    match_rule,
    parse_service,
    request_host,
    validate_rules,
)

RULES = [
    IngressRule("http://127.0.0.1:8000", "app.example.com", "^/api/"),  # 0
    IngressRule("http_status:200", "health.example.com"),  # 1
    IngressRule("hello_world", "*.example.com"),  # 2
    IngressRule("http_status:418", "app.example.com", r"\.php$"),  # 3
    IngressRule("http_status:404"),  # 4 catch-all
]


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("app.example.com", "/api/users", 0),
        ("app.example.com:443", "/api/", 0),  # port stripped
        ("APP.Example.COM", "/api/x", 0),  # case-insensitive
        ("app.example.com", "/v2/api/", 2),  # regex is searched, but ^ anchors it
        ("app.example.com", "/index.php", 2),  # wildcard rule 2 comes first
        ("app.example.com", "/", 2),  # no path match on rule 0: the wildcard takes it
        ("health.example.com", "/", 1),
        ("x.example.com", "/", 2),  # one level under the wildcard
        ("a.b.example.com", "/", 2),  # any depth (HasSuffix)
        ("example.com", "/", 4),  # the apex is not under *.example.com
        ("badexample.com", "/", 4),  # the suffix keeps its dot
        ("other.org", "/", 4),  # no match: the last rule
        ("", "/", 4),  # no Host at all
        ("[::1]:443", "/", 4),
    ],
)
def test_match_rule_table(host: str, path: str, expected: int) -> None:
    assert match_rule(RULES, host, path) == expected


def test_path_regex_is_searched_not_anchored() -> None:
    rules = [
        IngressRule("hello_world", "app.example.com", r"\.php$"),
        IngressRule("http_status:404"),
    ]
    assert match_rule(rules, "app.example.com", "/deep/index.php") == 0
    assert match_rule(rules, "app.example.com", "/index.php/x") == 1


def test_first_match_wins_over_more_specific_later_rule() -> None:
    rules = [
        IngressRule("hello_world", "*.example.com"),
        IngressRule("http_status:200", "health.example.com"),
        IngressRule("http_status:404"),
    ]
    assert match_rule(rules, "health.example.com", "/") == 0


@pytest.mark.parametrize("catch_all", [None, "", "*"])
def test_catch_all_spellings(catch_all: str | None) -> None:
    rules = [IngressRule("http_status:200", "a.example.com"), IngressRule("hello_world", catch_all)]
    assert rules[-1].is_catch_all
    assert match_rule(rules, "zzz", "/") == 1
    assert validate_rules(rules) == []


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("App.Example.com", "app.example.com"),
        ("app.example.com:8443", "app.example.com"),
        ("[::1]:443", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),  # unbracketed IPv6 cannot carry a port: left whole
        (" a.com ", "a.com"),
    ],
)
def test_request_host(header: str, host: str) -> None:
    assert request_host(header) == host


@pytest.mark.parametrize(
    ("text", "service"),
    [
        ("http://127.0.0.1:8000", OriginService("http", "127.0.0.1", 8000)),
        ("https://origin.internal", OriginService("https", "origin.internal", 443)),
        ("http://localhost/", OriginService("http", "localhost", 80)),
        ("unix:/run/app.sock", UnixService("/run/app.sock")),
        ("http_status:404", HttpStatus(404)),
        ("hello_world", HelloWorld()),
    ],
)
def test_parse_service(text: str, service: object) -> None:
    assert parse_service(text) == service


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://x:21", "unknown service"),
        ("localhost:8000", "unknown service"),
        ("http://h:8000/api", "without a path"),
        ("http://:8000", "no host"),
        ("http://h:99999", "invalid port"),
        ("http_status:abc", "200 to 599"),
        ("http_status:100", "200 to 599"),
        ("unix:relative.sock", "absolute"),
    ],
)
def test_parse_service_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_service(text)


@pytest.mark.parametrize(
    ("hostname", "path", "field", "message"),
    [
        ("app.example.com:443", None, "hostname", "port"),
        ("wiki.*", None, "hostname", "wildcard"),
        ("*.*.example.com", None, "hostname", "wildcard"),
        ("*example.com", None, "hostname", "followed by a dot"),
        ("bad_host!.com", None, "hostname", "not a valid DNS name"),
        ("a..com", None, "hostname", "not a valid DNS name"),
        ("app.example.com", "([", "path", "not a valid regex"),
    ],
)
def test_rule_errors_name_the_field(
    hostname: str, path: str | None, field: str, message: str
) -> None:
    with pytest.raises(RuleError, match=message) as info:
        IngressRule("hello_world", hostname, path)
    assert info.value.field == field


def test_service_error_names_service() -> None:
    with pytest.raises(RuleError) as info:
        IngressRule("nope", "a.example.com")
    assert info.value.field == "service"


def test_validate_rules_requires_catch_all_last() -> None:
    rules = [IngressRule("hello_world", "a.example.com"), IngressRule("http_status:404", "b.com")]
    [(index, message)] = validate_rules(rules)
    assert index == 1
    assert "must be a catch-all" in message


def test_validate_rules_flags_early_catch_all_and_empty_list() -> None:
    rules = [IngressRule("hello_world"), IngressRule("http_status:404")]
    assert [index for index, _ in validate_rules(rules)] == [0]
    assert "never be used" in validate_rules(rules)[0][1]
    path_only = [IngressRule("hello_world", None, "^/x"), IngressRule("http_status:404")]
    assert validate_rules(path_only) == []  # a path makes it not a catch-all
    assert [index for index, _ in validate_rules([])] == [None]
