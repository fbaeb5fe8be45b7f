"""The Rules-language compiler (lb/config/expressions.py): what compiles, what it means, and
that nothing but a clear ExpressionError ever comes out of it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lb.config.expressions import FIELDS, ExpressionError, Fields, compile_condition

REQUEST = Fields(
    host="app.example",
    method="POST",
    uri="/api/v1/x?a=1&b=2&a=3",
    headers={"accept": "text/html", "x-env": "Beta", "cookie": "s=1"},
    cookies={"s": "1"},
    client_ip="10.1.2.3",
    load_balancer="app.example",
    region="WEU",
    timestamp=1_700_000_000,
)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("", True),
        ('http.request.uri.path contains "/api"', True),
        ('http.request.uri.path matches "^/api/v[0-9]+/"', True),
        ('http.request.uri.path ~ "^/web"', False),
        ('http.request.method in {"GET" "HEAD"}', False),
        ('not http.request.method in {"GET", "HEAD"}', True),
        ('http.request.uri.query eq "a=1&b=2&a=3"', True),
        ("ip.src in {10.0.0.0/8 192.168.0.1}", True),
        ("ip.src in {2001:db8::/32}", False),
        ("ip.src eq 10.1.2.4", False),
        ('http.request.headers["x-env"][0] eq "Beta"', True),
        ('lower(http.request.headers["x-env"][0]) == "beta"', True),
        ('upper(http.host) eq "APP.EXAMPLE"', True),
        ('http.request.headers["missing"][0] ne "x"', False),
        ('http.request.headers["accept"][1] eq "x"', False),
        ('any(http.request.uri.args["a"][*] == "3")', True),
        ('all(http.request.uri.args["a"][*] == "3")', False),
        ('any(http.request.headers.names[*] == "x-env")', True),
        ('cf.load_balancer.region eq "WEU" && http.host eq "app.example"', True),
        ('cf.load_balancer.name eq "x" || http.cookie contains "s=1"', True),
        ('http.host eq "app.example" xor http.request.method eq "POST"', False),
        ('http.host eq "app.example" ^^ http.request.method eq "GET"', True),
        ("http.request.timestamp.sec in {1..5 1600000000..1800000000}", True),
        ("http.request.timestamp.sec >= 1700000000 and http.request.timestamp.sec lt 2", False),
        ("len(http.request.uri.args.names) == 2", True),
        ('starts_with(http.request.uri.path, "/api") and ends_with(http.host, ".example")', True),
        (
            '(http.host eq "a" or http.host eq "app.example") and !(http.request.method eq "GET")',
            True,
        ),
        ('not http.host eq "a" and http.host eq "b"', False),
        ('http.request.uri.path eq r"/api/v1/x"', True),
        ('http.user_agent eq r#"a "quoted" one"#', False),
        ('http.referer eq "" and http.x_forwarded_for eq ""', True),
        ('http.request.version eq "HTTP/1.1"', True),
        ('http.request.cookies["s"][0] eq "1"', True),
    ],
)
def test_r32_conditions_mean_what_cloudflare_says(condition: str, expected: bool) -> None:
    assert compile_condition(condition).matches(REQUEST) is expected


@pytest.mark.parametrize(
    ("condition", "message", "column"),
    [
        (
            'http.request.path eq "/"',
            'unknown field "http.request.path" (did you mean "http.request.uri.path"?)',
            1,
        ),
        (
            'http.request.headers eq "x"',
            'cannot compare a map: take one element (["name"][0]), or use any(...[*] ...)',
            1,
        ),
        (
            'http.request.headers.names eq "x"',
            "cannot compare an array: take one element ([0]), or use any(...[*] ...)",
            1,
        ),
        ("http.host eq 5", 'expected a string value, got "5"', 14),
        ("http.host", "expected a comparison after this string, got the end", 10),
        (
            'http.host matches "("',
            "bad regular expression: missing ): (",
            11,
        ),
        ('http.host eq "x" and', "expected a field or a function, got the end", 21),
        ('ip.src contains "10"', '"contains" does not apply to an IP address', 8),
        (
            'http.request.headers.names[*] eq "x"',
            "[*] is only allowed inside any(...) or all(...)",
            27,
        ),
        ('any(http.host eq "x")', "any(...) needs a [*] inside", 1),
        ('lowr(http.host) eq "x"', 'unknown function "lowr" (did you mean "lower"?)', 1),
        ('http.host eq "unterminated', "unterminated string", 14),
        ('http.host eq "a\\x"', 'only \\" and \\\\ are escapes in a string', 16),
        ("http.host eq 'x'", 'unexpected "\'"', 14),
        ('(http.host eq "x"', 'expected ")", got the end', 18),
        ('http.host eq "x")', 'unexpected ")"', 17),
        ("http.host[", 'expected "]", got the end', 11),
        ("http.request.timestamp.sec eq " + "9" * 50, "number too long", 31),
        (
            'http.host matches "a{1001}"',
            "bad regular expression: invalid repetition size: {1001}",
            11,
        ),
        ("(" * 400 + 'http.host eq "x"' + ")" * 400, "nested too deeply", None),
        ('http.host eq "x" or ' * 300 + "", "longer than 4096 characters", 4097),
    ],
)
def test_r32_mistakes_are_named_with_their_column(
    condition: str, message: str, column: int
) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_condition(condition)
    assert info.value.message == message
    assert column is None or info.value.column == column


_ATOMS = st.sampled_from(
    [
        *FIELDS,
        "and",
        "or",
        "not",
        "xor",
        "in",
        "eq",
        "ne",
        "contains",
        "matches",
        "any",
        "all",
        "lower",
        "len",
        "(",
        ")",
        "{",
        "}",
        "[",
        "]",
        "[*]",
        "[0]",
        '["a"]',
        ",",
        '"x"',
        '"^a.*"',
        "1",
        "1..3",
        "10.0.0.0/8",
        "::1",
        "&&",
        "||",
        "!",
        "==",
        "~",
        'r"x"',
        "*",
    ]
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(parts=st.lists(_ATOMS, max_size=12), noise=st.text(max_size=20))
def test_any_text_compiles_or_raises_expression_error_and_compiled_never_fails(
    parts: list[str], noise: str
) -> None:
    for text in (" ".join(parts), noise, " ".join(parts) + noise):
        try:
            condition = compile_condition(text)
        except ExpressionError as exc:
            assert 1 <= exc.column <= len(text) + 1
            continue
        for fields in (REQUEST, Fields(), Fields(client_ip="::1", uri="?", headers={"a": ""})):
            assert condition.matches(fields) in (True, False)


def test_long_chains_and_negations_evaluate_in_a_deep_stack() -> None:
    """The longest conditions that compile stay shallow when evaluated (one closure per
    chain, negations counted), so a request evaluated deep in the proxy's stack cannot hit
    the recursion limit."""
    chain = compile_condition(
        " or ".join(['http.host eq "x"'] * 200) + ' or http.host eq "app.example"'
    )
    negated = compile_condition("not " * 999 + 'http.host eq "x"')

    def deep(n: int) -> tuple[bool, bool]:
        return (chain.matches(REQUEST), negated.matches(REQUEST)) if n == 0 else deep(n - 1)

    assert deep(800) == (True, True)
