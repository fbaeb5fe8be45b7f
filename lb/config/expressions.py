"""Cloudflare's Rules language, as the conditions of load-balancing custom rules use it (R32).

A condition is compiled once (:func:`compile_condition`) into a tree of closures and then
evaluated per request against :class:`Fields`.  Compiling checks names and types, so a
condition that compiles cannot fail while it is evaluated; the configuration loader compiles
every condition to report mistakes with their file, line and column.

The subset (docs/rules.md has the table):

* fields: ``http.host``, ``http.request.method``, ``http.request.uri`` (``.path``, ``.query``,
  ``.args``, ``.args.names``, ``.args.values``), ``http.request.version``,
  ``http.request.headers`` (``.names``, ``.values``; names lower-case),
  ``http.request.cookies``, ``http.cookie``, ``http.referer``, ``http.user_agent``,
  ``http.x_forwarded_for``, ``http.request.timestamp.sec``, ``ip.src``,
  ``cf.load_balancer.name``, ``cf.load_balancer.region``;
* comparisons ``eq ne lt le gt ge`` (and ``== != < <= > >=``), ``contains``, ``matches``
  (``~``), ``in {...}`` (strings, integers and ``a..b`` ranges, IP addresses and CIDR blocks);
  ``matches`` runs RE2 (:func:`_regex`), a linear-time engine like the one Cloudflare's rules
  use, so a crafted request cannot make a pattern backtrack on the event loop;
* ``not and xor or`` (and ``! && ^^ ||``), binding in that order, and parentheses;
* maps and arrays: ``http.request.headers["accept"][0]``, and ``any(...[*] ...)`` /
  ``all(...[*] ...)`` over every element;
* functions ``lower``, ``upper``, ``len``, ``starts_with``, ``ends_with``.

A value that is missing (a header the request does not carry, an index past the end) makes
every comparison on it false, ``ne`` included.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import re2  # type: ignore[import-untyped]

from lb.config._report import did_you_mean

__all__ = [
    "EXTENSIONS",
    "MAX_LENGTH",
    "Condition",
    "ExpressionError",
    "Fields",
    "compile_condition",
]

MAX_LENGTH = 4096
"""Longest condition accepted, in characters (Cloudflare's limit for rule expressions)."""


class ExpressionError(ValueError):
    """A condition that does not compile; ``column`` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (column {column})")
        self.message = message
        self.column = column


@dataclass(frozen=True, slots=True)
class Fields:
    """What a condition may read about one request."""

    host: str = ""
    method: str = "GET"
    uri: str = "/"
    """The request target: path and query, the path normalized (steering/urls.py)."""
    raw_uri: str = ""
    """The target as sent, for the ``raw.`` fields; empty means the same as ``uri``."""
    version: str = "HTTP/1.1"
    headers: Mapping[str, str] = field(default_factory=dict)
    """Request headers with lower-case names."""
    cookies: Mapping[str, str] = field(default_factory=dict)
    client_ip: str = ""
    load_balancer: str = ""
    region: str = ""
    """Region code of the data center the request entered at (``cf.load_balancer.region``)."""
    timestamp: int = 0


# ----------------------------------------------------------------------------- fields

STR, INT, IP, ARRAY, MAP, BOOL = "string", "integer", "IP address", "array", "map", "boolean"

Getter = Callable[[Fields], Any]


def _path(f: Fields) -> str:
    return f.uri.partition("?")[0]


def _query(f: Fields) -> str:
    return f.uri.partition("?")[2]


def _raw(f: Fields) -> str:
    return f.raw_uri or f.uri


def _args(f: Fields) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in parse_qsl(_query(f), keep_blank_values=True):
        out.setdefault(key, []).append(value)
    return out


def _header(name: str) -> Getter:
    return lambda f: f.headers.get(name, "")


FIELDS: dict[str, tuple[str, Getter]] = {
    "http.host": (STR, lambda f: f.host),
    "http.request.method": (STR, lambda f: f.method),
    "http.request.uri": (STR, lambda f: f.uri),
    "http.request.uri.path": (STR, _path),
    "http.request.uri.query": (STR, _query),
    "raw.http.request.uri": (STR, _raw),
    "raw.http.request.uri.path": (STR, lambda f: _raw(f).partition("?")[0]),
    "raw.http.request.uri.query": (STR, lambda f: _raw(f).partition("?")[2]),
    "http.request.uri.args": (MAP, _args),
    "http.request.uri.args.names": (ARRAY, lambda f: list(_args(f))),
    "http.request.uri.args.values": (ARRAY, lambda f: [v for vs in _args(f).values() for v in vs]),
    "http.request.version": (STR, lambda f: f.version),
    "http.request.headers": (MAP, lambda f: {k: [v] for k, v in f.headers.items()}),
    "http.request.headers.names": (ARRAY, lambda f: list(f.headers)),
    "http.request.headers.values": (ARRAY, lambda f: list(f.headers.values())),
    "http.request.cookies": (MAP, lambda f: {k: [v] for k, v in f.cookies.items()}),
    "http.cookie": (STR, _header("cookie")),
    "http.referer": (STR, _header("referer")),
    "http.user_agent": (STR, _header("user-agent")),
    "http.x_forwarded_for": (STR, _header("x-forwarded-for")),
    "http.request.timestamp.sec": (INT, lambda f: f.timestamp),
    "ip.src": (IP, lambda f: _ip(f.client_ip)),
    "cf.load_balancer.name": (STR, lambda f: f.load_balancer),
    "cf.load_balancer.region": (STR, lambda f: f.region),
}


EXTENSIONS = frozenset(
    {
        "http.user_agent",
        "http.x_forwarded_for",
        "http.request.cookies",
        "http.request.headers.names",
        "http.request.headers.values",
        "raw.http.request.uri",
        "raw.http.request.uri.path",
        "raw.http.request.uri.query",
        "lower",
        "upper",
        "len",
        "starts_with",
        "ends_with",
    }
)
"""Fields and functions this compiler offers that Cloudflare's load-balancing-rules reference
("Supported fields and operators") does not list: a condition using them works here, and the
configuration check warns that Cloudflare's API would refuse it."""


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# ----------------------------------------------------------------------------- tokens

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<raw>r(?P<hashes>\#*)")
  | (?P<string>")
  | (?P<ip>(?:\d+\.\d+\.\d+\.\d+|[0-9a-fA-F]*:[0-9a-fA-F:.]*)(?:/\d+)?)
  | (?P<range>\d+\.\.\d+)
  | (?P<int>-?\d+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||\^\^|[<>~!(){}\[\],*])
    """,
    re.VERBOSE,
)


@dataclass(slots=True)
class _Token:
    kind: str
    text: str
    value: Any
    column: int


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    while i < len(text):
        m = _TOKEN.match(text, i)
        if m is None:
            raise ExpressionError(f"unexpected {text[i]!r}", i + 1)
        kind = m.lastgroup or ""
        if kind == "hashes":
            kind = "raw"
        if kind == "space":
            i = m.end()
            continue
        if kind in ("string", "raw"):
            string, end = _string(text, m, kind == "raw")
            out.append(_Token("string", text[i:end], string, i + 1))
            i = end
            continue
        token = m.group()
        value: Any = token
        if kind in ("int", "range") and len(token) > 40:
            raise ExpressionError("number too long", i + 1)
        if kind == "int":
            value = int(token)
        elif kind == "range":
            low, high = token.split("..")
            value = (int(low), int(high))
        out.append(_Token(kind, token, value, i + 1))
        i = m.end()
    out.append(_Token("end", "", None, len(text) + 1))
    return out


def _string(text: str, m: re.Match[str], raw: bool) -> tuple[str, int]:
    """A string literal starting at ``m``: its value and the index after it."""
    start = m.start() + 1
    if raw:
        close = '"' + (m.group("hashes") or "")
        end = text.find(close, m.end())
        if end < 0:
            raise ExpressionError("unterminated raw string", start)
        return text[m.end() : end], end + len(close)
    out: list[str] = []
    i = m.end()
    while i < len(text):
        c = text[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in '"\\':
                raise ExpressionError('only \\" and \\\\ are escapes in a string', i + 1)
            out.append(text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    raise ExpressionError("unterminated string", start)


# ----------------------------------------------------------------------------- parsing

_COMPARE = {
    "eq": "eq",
    "==": "eq",
    "ne": "ne",
    "!=": "ne",
    "lt": "lt",
    "<": "lt",
    "le": "le",
    "<=": "le",
    "gt": "gt",
    "ge": "ge",
    ">": "gt",
    ">=": "ge",
    "contains": "contains",
    "matches": "matches",
    "~": "matches",
    "in": "in",
}
_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
}
_OPERATORS = {
    STR: ("eq", "ne", "lt", "le", "gt", "ge", "contains", "matches", "in"),
    INT: ("eq", "ne", "lt", "le", "gt", "ge", "in"),
    IP: ("eq", "ne", "in"),
}
_LOGIC = {"or": "or", "||": "or", "xor": "xor", "^^": "xor", "and": "and", "&&": "and"}
_FUNCTIONS = ("lower", "upper", "len", "starts_with", "ends_with", "any", "all")


class _Star:
    """The element an ``any``/``all`` is looking at, for the ``[*]`` inside it, and the array
    that ``[*]`` ranges over (set when the parser meets it)."""

    __slots__ = ("source", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.source: Node | None = None


Node = Callable[[Fields], Any]


@dataclass(slots=True)
class _Value:
    """A compiled value: its type, its getter and where it starts (for messages)."""

    type: str
    get: Node
    column: int


class _Parser:
    """Recursive descent over the tokens, one method per precedence level; each returns the
    compiled closure (or :class:`_Value`) of what it read."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0
        self.star: _Star | None = None
        self.extensions: dict[str, None] = {}
        """:data:`EXTENSIONS` the condition uses, in order of first use."""

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind != "end":  # the end token stays: reading past it is an error, not a crash
            self.i += 1
        return token

    def expect(self, text: str) -> _Token:
        if self.tok.text != text:
            raise ExpressionError(f'expected "{text}", got {self._shown()}', self.tok.column)
        return self.take()

    def _shown(self) -> str:
        """The current token, for a message."""
        return "the end" if self.tok.kind == "end" else f'"{self.tok.text}"'

    def logical(self, level: int = 0) -> Node:
        """``or`` < ``xor`` < ``and`` < ``not``, left to right."""
        names = ("or", "xor", "and")
        if level == len(names):
            return self.unary()
        terms = [self.logical(level + 1)]
        while _LOGIC.get(self.tok.text) == names[level]:
            self.take()
            terms.append(self.logical(level + 1))
        # One closure over the whole chain, not one per operator: a long chain must not
        # nest closures as deep as it is long (evaluation would hit the recursion limit).
        return terms[0] if len(terms) == 1 else _chain(names[level], terms)

    def unary(self) -> Node:
        if self.tok.text in ("not", "!"):
            negations = 0  # counted, not nested: "not not not x" is one closure deep
            while self.tok.text in ("not", "!"):
                self.take()
                negations += 1
            inner = self.unary()
            if negations % 2 == 0:
                return lambda f: bool(inner(f))
            return lambda f: not inner(f)
        if self.tok.text == "(":
            self.take()
            inner = self.logical()
            self.expect(")")
            return inner
        return self.comparison()

    def comparison(self) -> Node:
        left = self.value()
        op = _COMPARE.get(self.tok.text)
        if op is None:
            if left.type != BOOL:
                raise ExpressionError(
                    f"expected a comparison after this {left.type}, got {self._shown()}",
                    self.tok.column,
                )
            return left.get
        column = self.take().column
        if left.type in (ARRAY, MAP):
            hint = "[0]" if left.type == ARRAY else '["name"][0]'
            raise ExpressionError(
                f"cannot compare {_a(left.type)}: "
                f"take one element ({hint}), or use any(...[*] ...)",
                left.column,
            )
        allowed = _OPERATORS.get(left.type, ())
        if op not in allowed:
            raise ExpressionError(f'"{op}" does not apply to {_a(left.type)}', column)
        get = left.get
        if op == "in":
            test = self.set_of(left.type)
            return lambda f: (v := get(f)) is not None and test(v)
        literal = self.literal(left.type)
        if op == "contains":
            return lambda f: (v := get(f)) is not None and literal in v
        if op == "matches":
            search = _regex(literal, column)
            return lambda f: (v := get(f)) is not None and search(v) is not None
        compare = _ORDER[op]
        return lambda f: (v := get(f)) is not None and compare(v, literal)

    def literal(self, type_: str) -> Any:
        token = self.take()
        if type_ == STR and token.kind == "string":
            return token.value
        if type_ == INT and token.kind == "int":
            return token.value
        if type_ == IP and token.kind == "ip":
            try:
                return ipaddress.ip_address(token.text)
            except ValueError:
                pass
        raise ExpressionError(f'expected {_a(type_)} value, got "{token.text}"', token.column)

    def set_of(self, type_: str) -> Callable[[Any], bool]:
        """``{a b c}`` after ``in``: a membership test."""
        self.expect("{")
        exact: set[Any] = set()
        ranges: list[tuple[int, int]] = []
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        while self.tok.text != "}":
            token = self.tok
            if token.kind == "end":
                raise ExpressionError('expected "}"', token.column)
            if type_ == INT and token.kind == "range":
                ranges.append(self.take().value)
            elif type_ == IP and token.kind == "ip" and "/" in token.text:
                try:
                    networks.append(ipaddress.ip_network(self.take().text, strict=False))
                except ValueError:
                    raise ExpressionError(f'bad CIDR block "{token.text}"', token.column) from None
            else:
                exact.add(self.literal(type_))
            if self.tok.text == ",":
                self.take()
        self.take()

        def test(v: Any) -> bool:
            return (
                v in exact
                or any(low <= v <= high for low, high in ranges)
                or any(v.version == n.version and v in n for n in networks)
            )

        return test

    def value(self) -> _Value:
        if self.tok.kind != "name":
            raise ExpressionError(
                f"expected a field or a function, got {self._shown()}", self.tok.column
            )
        token = self.take()
        if self.tok.text == "(":
            return self.function(token)
        found = FIELDS.get(token.text)
        if token.text in EXTENSIONS:
            self.extensions[token.text] = None
        if found is None:
            hint = did_you_mean(token.text, [*FIELDS, *_FUNCTIONS])
            raise ExpressionError(f'unknown field "{token.text}"{hint}', token.column)
        type_, get = found
        value = _Value(type_, get, token.column)
        while self.tok.text == "[":
            value = self.index(value)
        return value

    def index(self, value: _Value) -> _Value:
        bracket = self.take()
        token = self.take()
        self.expect("]")
        outer = value.get
        if value.type == MAP and token.kind == "string":
            key = token.value
            return _Value(ARRAY, lambda f: outer(f).get(key, []), value.column)
        if value.type == ARRAY and token.kind == "int" and token.value >= 0:
            n = token.value
            return _Value(STR, lambda f: _element(outer(f), n), value.column)
        if value.type == ARRAY and token.text == "*":
            if self.star is None:
                raise ExpressionError(
                    "[*] is only allowed inside any(...) or all(...)", bracket.column
                )
            star = self.star
            if star.source is not None:
                raise ExpressionError("only one [*] per any(...) or all(...)", bracket.column)
            star.source = outer
            return _Value(STR, lambda f: star.value, value.column)
        wanted = '["name"]' if value.type == MAP else "[0], [1]... or [*]"
        raise ExpressionError(f"{_a(value.type)} is indexed with {wanted}", bracket.column)

    def function(self, name: _Token) -> _Value:
        self.expect("(")
        fn = name.text
        if fn in ("any", "all"):
            if self.star is not None:
                raise ExpressionError(f"{fn}(...) cannot be nested", name.column)
            star = self.star = _Star()
            cond = self.logical()
            self.star = None
            source = star.source
            if source is None:
                raise ExpressionError(f"{fn}(...) needs a [*] inside", name.column)
            self.expect(")")
            each = any if fn == "any" else all

            def over(f: Fields) -> bool:
                results = []
                for element in source(f):
                    star.value = element
                    results.append(cond(f))
                return each(results)

            return _Value(BOOL, over, name.column)
        if fn not in _FUNCTIONS:
            hint = did_you_mean(fn, _FUNCTIONS)
            raise ExpressionError(f'unknown function "{fn}"{hint}', name.column)
        if fn in EXTENSIONS:
            self.extensions[fn] = None
        arg = self.value()
        if fn in ("lower", "upper"):
            self.expect(")")
            _want(arg, STR, fn)
            inner = arg.get
            convert: Callable[[str], str] = str.lower if fn == "lower" else str.upper
            return _Value(
                STR, lambda f: None if (v := inner(f)) is None else convert(v), name.column
            )
        if fn == "len":
            self.expect(")")
            if arg.type not in (STR, ARRAY):
                raise ExpressionError("len(...) takes a string or an array", arg.column)
            inner = arg.get
            return _Value(INT, lambda f: None if (v := inner(f)) is None else len(v), name.column)
        _want(arg, STR, fn)
        self.expect(",")
        literal = self.literal(STR)
        self.expect(")")
        inner, at_start = arg.get, fn == "starts_with"

        def affix(f: Fields) -> bool:
            v = inner(f)
            if v is None:
                return False
            return bool(v.startswith(literal) if at_start else v.endswith(literal))

        return _Value(BOOL, affix, name.column)


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is reported as an ExpressionError, not logged
_RE2_OPTIONS.never_capture = True  # only "does it match" is asked
_RE2_OPTIONS.max_mem = 8 << 20  # per pattern; RE2 refuses a pattern whose program needs more


def _regex(pattern: str, column: int) -> Callable[[str], object]:
    """The ``search`` of ``pattern`` compiled by RE2: time linear in the input, whatever the
    pattern.  What RE2 cannot compile (backreferences, lookaround, too large a program) is a
    configuration error here, at load time, never at request time."""
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ExpressionError(f"bad regular expression: {reason}", column) from None
    search: Callable[[str], object] = compiled.search
    return search


def _a(type_: str) -> str:
    """The type name with its article: "a string", "an IP address"."""
    return f"an {type_}" if type_[0] in "aeiouI" else f"a {type_}"


def _element(array: Sequence[str], n: int) -> str | None:
    return array[n] if n < len(array) else None


def _want(arg: _Value, type_: str, fn: str) -> None:
    if arg.type != type_:
        raise ExpressionError(f"{fn}(...) takes {_a(type_)}, not {_a(arg.type)}", arg.column)


def _chain(op: str, terms: list[Node]) -> Node:
    """``a and b and c`` (or ``or``, ``xor``) as one closure, left to right, short-circuiting
    ``and``/``or`` as the language does."""
    if op == "and":
        return lambda f: all(t(f) for t in terms)
    if op == "or":
        return lambda f: any(t(f) for t in terms)
    return lambda f: sum(bool(t(f)) for t in terms) % 2 == 1


# ----------------------------------------------------------------------------- API


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition; ``matches(fields)`` evaluates it."""

    text: str
    _test: Node = field(repr=False, compare=False)
    extensions: tuple[str, ...] = ()
    """The tunnel-lb extensions (:data:`EXTENSIONS`) it uses."""

    def matches(self, fields: Fields) -> bool:
        return bool(self._test(fields))


def compile_condition(text: str) -> Condition:
    """Compile ``text`` (an empty condition is always true); raise :class:`ExpressionError`."""
    if not text.strip():
        return Condition(text, lambda f: True)
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"longer than {MAX_LENGTH} characters", MAX_LENGTH + 1)
    parser = _Parser(text)
    try:
        test = parser.logical()
    except RecursionError:
        raise ExpressionError("nested too deeply", parser.tok.column) from None
    if parser.tok.kind != "end":
        raise ExpressionError(f"unexpected {parser._shown()}", parser.tok.column)
    return Condition(text, test, tuple(parser.extensions))
