"""Table tests of lb/config/hosts.py: the one reading of hosts and ``connect_to``."""

from __future__ import annotations

import pytest

from lb.config.hosts import LOOPBACK, dial_address, normalise_host, split_host_port
from lb.config.loader import load_config_text
from lb.config.model import Monitor, Origin
from lb.core.book import ProbeTarget
from lb.core.health import Health
from lb.core.snapshot import EndpointView
from lb.proxy.upstream import target_for
from monitors.spec import probe_for


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("[::1]:443", ("::1", 443)),
        ("[2001:db8::1]:0", ("2001:db8::1", 0)),
        ("localhost:80", ("localhost", 80)),
        ("Origin.Example.com:80", ("Origin.Example.com", 80)),
        ("_acme.example.com.:65535", ("_acme.example.com.", 65535)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ],
)
def test_split_host_port(value: str, expected: tuple[str, int]) -> None:
    """Host and port both required (configuration, connector and access addresses)."""
    assert split_host_port(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", 'expected "host:port", got ""'),
        ("localhost", 'expected "host:port", got "localhost"'),
        ("localhost:", 'expected "host:port", got "localhost:"'),
        (":80", 'expected "host:port", got ":80"'),
        ("[::1]", 'expected "host:port", got "[::1]"'),
        ("a.example:x", 'port must be a number between 0 and 65535, got "x"'),
        ("a.example:65536", 'port must be a number between 0 and 65535, got "65536"'),
        ("a.example:-1", 'port must be a number between 0 and 65535, got "-1"'),
        ("a.example:000080", 'port must be a number between 0 and 65535, got "000080"'),
        ("a.example:\u0662", 'port must be a number between 0 and 65535, got "\u0662"'),
        ("[::1]:99999", 'port must be a number between 0 and 65535, got "99999"'),
        ("::1:443", 'IPv6 addresses need brackets, e.g. "[::1]:443"'),
        ("[::1", 'unclosed "[" in "[::1"'),
        ("[::1]x", 'unexpected text after "]" in "[::1]x"'),
        ("[a.example]:80", '"a.example" in brackets is not an IPv6 address'),
        ("a..example:80", '"a..example" is not a host name or IP address'),
        ("a b:80", '"a b" is not a host name or IP address'),
        ("a.example\n:80", '"a.example\n" is not a host name or IP address'),
    ],
)
def test_split_host_port_rejects(value: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        split_host_port(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("[::1]:443", ("::1", 443)),
        ("[::1]", ("::1", 443)),
        ("::1", ("::1", 443)),
        ("2001:db8::1", ("2001:db8::1", 443)),
        ("localhost", ("localhost", 443)),
        ("example.com:", ("example.com", 443)),
        ("example.com:0", ("example.com", 0)),
    ],
)
def test_split_host_port_default_port(value: str, expected: tuple[str, int]) -> None:
    """With a default port (Host values, ``connect_to`` targets, ``--via`` URLs)."""
    assert split_host_port(value, default_port=443) == expected


@pytest.mark.parametrize(
    "value", ["a.example:x", "a.example:65536", "[::1", "[::1]x", "[::1]:99999", "fe::1::2"]
)
def test_split_host_port_default_port_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(value, default_port=443)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(":0", ("127.0.0.1", 0)), (":9100", ("127.0.0.1", 9100)), ("[::]:1", ("::", 1))],
)
def test_split_host_port_default_host(value: str, expected: tuple[str, int]) -> None:
    """A bare ``:port`` (admin and ``--listen`` options) is loopback, never every interface."""
    assert split_host_port(value, default_host=LOOPBACK) == expected


def test_split_host_port_default_host_still_needs_a_port() -> None:
    with pytest.raises(ValueError, match='expected "host:port", got ":"'):
        split_host_port(":", default_host=LOOPBACK)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("App.Example.COM", "app.example.com"),
        ("app.example.com.", "app.example.com"),
        ("app.example.com:8443", "app.example.com"),
        ("app.example.com.:8443", "app.example.com"),
        ("_acme.example", "_acme.example"),
        ("127.0.0.1:80", "127.0.0.1"),
        ("[::1]:443", "::1"),
        ("[0:0::1]", "::1"),
        ("::1", "::1"),
        ("localhost", "localhost"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        # Not host names: the proxy answers 400 before steering.
        ("app.example.com..", None),
        ("..", None),
        (".", None),
        ("", None),
        (".app.example", None),
        ("a..example", None),
        ("a" * 64 + ".example", None),
        (".".join(["a" * 60] * 5), None),
        ("app example", None),
        ("app.example\x00", None),
        ("app/.example", None),
        ("bücher.example", None),
        ("app.example:http", None),
        ("[app.example]", None),
        ("[::1", None),
        ("-app.example", None),  # read by split_host_port, as the configuration reads names
    ],
)
def test_normalise_host(value: str, expected: str | None) -> None:
    assert normalise_host(value) == expected
    assert normalise_host(value) == expected  # cached answer is the same


CONNECT_TO = {"origin.example.com:443": "127.0.0.1:8443", "[::1]:443": "[::2]:9443"}


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("origin.example.com", 443, ("127.0.0.1", 8443)),
        # The reviewer's failing input: the proxy dialled the real host for this one.
        ("Origin.Example.com", 443, ("127.0.0.1", 8443)),
        ("origin.example.com.", 443, ("127.0.0.1", 8443)),
        ("origin.example.com", 80, ("origin.example.com", 80)),
        ("other.example.com", 443, ("other.example.com", 443)),
        ("::1", 443, ("::2", 9443)),
        ("not a host", 443, ("not a host", 443)),
    ],
)
def test_dial_address(address: str, port: int, expected: tuple[str, int]) -> None:
    assert dial_address(address, port, CONNECT_TO) == expected


def test_dial_address_ignores_bare_keys_and_empty_maps() -> None:
    # The loader only stores "host:port" keys; a bare key is not a second way to match.
    assert dial_address("origin.example.com", 443, {"origin.example.com": "127.0.0.1"}) == (
        "origin.example.com",
        443,
    )
    assert dial_address("Origin.Example.com", 443, {}) == ("Origin.Example.com", 443)


def test_dial_address_keeps_the_port_when_the_value_has_none() -> None:
    assert dial_address("a.example", 8443, {"a.example:8443": "127.0.0.1"}) == ("127.0.0.1", 8443)


def test_proxy_and_monitors_dial_the_same_address() -> None:
    """The regression: a mixed-case address was probed on its stand-in, proxied to the real host."""
    origin = Origin(name="o", address="Origin.Example.com", header={"Host": ("app.example",)})
    connect_to = {"origin.example.com:443": "127.0.0.1:8443"}  # as the loader stores it
    monitor = Monitor(id="m", type="https")
    probe = probe_for(
        ProbeTarget(pool="p", endpoint="o", origin=origin, monitor=monitor, pool_id="p"),
        connect_to=connect_to,
    )
    endpoint = EndpointView(
        pool="p",
        name="o",
        index=0,
        address=origin.address,
        port=0,
        host="app.example",
        tunnel_id=None,
        weight=1.0,
        enabled=True,
        health=Health.HEALTHY,
        vantage_health={},
        disabled_at=None,
        datacenters=frozenset(),
    )
    target = target_for(endpoint, "client.example", connect_to)
    assert (probe.dial_host, probe.dial_port) == ("127.0.0.1", 8443)
    assert (target.dial_host, target.dial_port) == (probe.dial_host, probe.dial_port)
    assert (target.host, probe.host) == ("app.example", "app.example")  # Host/SNI unchanged


def test_loader_stores_connect_to_keys_the_way_dialling_looks_them_up() -> None:
    text = (
        "connect_to:\n"
        "  'Origin.Example.com.:443': 127.0.0.1:8443\n"
        "  '[0:0:0:0:0:0:0:1]:443': 127.0.0.1:9443\n"
    )
    connect_to = load_config_text(text).config.connect_to
    assert dial_address("origin.example.com", 443, connect_to) == ("127.0.0.1", 8443)
    assert dial_address("::1", 443, connect_to) == ("127.0.0.1", 9443)
