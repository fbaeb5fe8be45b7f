"""HTTPS listeners: certificate files, SNI choice among certificates, clear startup errors."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import struct
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from proxy_support import LB_HOST, Certs, Client, Stack, raw_exchange, start_stack
from waiting import wait_until

from lb.config import ConfigError, load_config_text
from lb.config.model import CertificatePair, Limits, Listener
from lb.logs import JsonFormatter
from lb.proxy import connection
from lb.proxy.listeners import (
    AnyListener,
    SniTable,
    TlsListener,
    certificate_names,
    listener_contexts,
    open_listeners,
)


@dataclass
class Pem:
    """A leaf certificate written to files."""

    cert: str
    key: str
    combined: str


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pems(ca: trustme.CA, tmp_path: Path) -> dict[str, Pem]:
    """Certificates by label: default, a, b, wild (*.w.example), ip (no DNS name)."""
    identities = {
        "default": ("default.example",),
        "a": ("a.example",),
        "b": ("b.example", "www.b.example"),
        "wild": ("*.w.example",),
        "exact": ("x.w.example",),
        "ip": ("127.0.0.1",),
    }
    out = {}
    for label, names in identities.items():
        leaf = ca.issue_cert(*names)
        pem = Pem(
            str(tmp_path / f"{label}.crt"),
            str(tmp_path / f"{label}.key"),
            str(tmp_path / f"{label}.pem"),
        )
        leaf.cert_chain_pems[0].write_to_path(pem.cert)
        leaf.private_key_pem.write_to_path(pem.key)
        leaf.private_key_and_cert_chain_pem.write_to_path(pem.combined)
        out[label] = pem
    return out


def pair(pem: Pem, *hostnames: str) -> CertificatePair:
    return CertificatePair(certificate=pem.cert, key=pem.key, hostnames=hostnames)


async def _handshake_then_wait(stream: trio.SSLStream[trio.SocketStream]) -> None:
    try:
        await stream.do_handshake()
        await stream.receive_some(1)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _accept_tls(
    listener: AnyListener, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    assert isinstance(listener, TlsListener)
    async with listener, trio.open_nursery() as nursery:
        task_status.started()
        while True:
            nursery.start_soon(_handshake_then_wait, await listener.accept())


async def serve(nursery: trio.Nursery, spec: Listener) -> int:
    """Open ``spec`` on a free loopback port, complete handshakes on it; the port."""
    (listener,) = await open_listeners([spec])
    port = listener.transport_listener.socket.getsockname()[1]  # type: ignore[union-attr]
    await nursery.start(_accept_tls, listener)
    return int(port)


async def served(
    port: int, ca: trustme.CA, server_hostname: str | None, *, check_hostname: bool = True
) -> tuple[list[str], str | None]:
    """The DNS names of the certificate the server presents, and the ALPN protocol.

    The certificate is always verified against ``ca``; with ``check_hostname`` it must also
    match ``server_hostname``.
    """
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = check_hostname
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(raw, ctx, server_hostname=server_hostname)
    try:
        with trio.fail_after(5):
            await tls.do_handshake()
        cert = tls.getpeercert()
        alpn = tls.selected_alpn_protocol()
    finally:
        await trio.aclose_forcefully(tls)
    assert cert
    return sorted(str(v) for k, v in cert["subjectAltName"] if k == "DNS"), alpn


def listener(default: Pem | None, *pairs: CertificatePair) -> Listener:
    cert, key = (default.cert, default.key) if default else ("", "")
    return Listener(address="127.0.0.1", port=0, certificate=cert, key=key, certificates=pairs)


# ---------------------------------------------------------------------- SNI over real sockets


async def test_sni_picks_the_certificate_of_each_hostname(
    nursery: trio.Nursery, ca: trustme.CA, pems: dict[str, Pem]
) -> None:
    spec = listener(pems["default"], pair(pems["a"]), pair(pems["b"]))
    port = await serve(nursery, spec)
    assert await served(port, ca, "a.example") == (["a.example"], "http/1.1")
    assert await served(port, ca, "b.example") == (["b.example", "www.b.example"], "http/1.1")
    assert (await served(port, ca, "WWW.B.Example"))[0] == ["b.example", "www.b.example"]
    assert (await served(port, ca, "default.example"))[0] == ["default.example"]


async def test_unknown_or_missing_sni_gets_the_default_certificate(
    nursery: trio.Nursery, ca: trustme.CA, pems: dict[str, Pem]
) -> None:
    port = await serve(nursery, listener(pems["default"], pair(pems["a"]), pair(pems["b"])))
    for name in ("other.example", "a.example.evil", "sub.a.example", None):
        names, alpn = await served(port, ca, name, check_hostname=False)
        assert (names, alpn) == (["default.example"], "http/1.1"), name
    with pytest.raises(trio.BrokenResourceError) as info:
        await served(port, ca, "other.example")
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)


async def test_wildcard_matches_one_label_and_exact_names_win(
    nursery: trio.Nursery, ca: trustme.CA, pems: dict[str, Pem]
) -> None:
    port = await serve(nursery, listener(pems["default"], pair(pems["wild"]), pair(pems["exact"])))
    assert (await served(port, ca, "y.w.example"))[0] == ["*.w.example"]
    assert (await served(port, ca, "x.w.example"))[0] == ["x.w.example"]
    for name in ("w.example", "a.y.w.example"):
        assert (await served(port, ca, name, check_hostname=False))[0] == ["default.example"]


async def test_listed_hostnames_replace_the_certificate_names(
    nursery: trio.Nursery, ca: trustme.CA, pems: dict[str, Pem]
) -> None:
    spec = listener(pems["default"], pair(pems["a"], "App.Example.", "*.apps.example"))
    port = await serve(nursery, spec)
    for name in ("app.example", "one.apps.example"):
        assert (await served(port, ca, name, check_hostname=False))[0] == ["a.example"]
    assert (await served(port, ca, "a.example", check_hostname=False))[0] == ["default.example"]


async def test_without_a_default_the_first_pair_is_the_default(
    nursery: trio.Nursery, ca: trustme.CA, pems: dict[str, Pem]
) -> None:
    b = pems["b"]
    combined = CertificatePair(certificate=b.combined, key=b.combined)
    port = await serve(nursery, listener(None, pair(pems["a"]), combined))
    assert (await served(port, ca, "www.b.example"))[0] == ["b.example", "www.b.example"]
    assert (await served(port, ca, None, check_hostname=False))[0] == ["a.example"]


async def test_requests_go_through_the_proxy_with_the_sni_certificate(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path
) -> None:
    lb_leaf = certs.ca.issue_cert(LB_HOST)
    other = certs.ca.issue_cert("default.example")
    files = {}
    for label, leaf in (("lb", lb_leaf), ("other", other)):
        files[label] = str(tmp_path / f"{label}.pem")
        leaf.private_key_and_cert_chain_pem.write_to_path(files[label])
    spec = Listener(
        address="127.0.0.1",
        port=0,
        certificate=files["other"],
        key=files["other"],
        certificates=(CertificatePair(certificate=files["lb"], key=files["lb"]),),
    )
    listeners = await open_listeners([spec])
    stack = await start_stack(nursery, certs, 1, listeners=listeners)
    ctx = ssl.create_default_context()
    certs.ca.configure_trust(ctx)  # check_hostname is on: only the LB_HOST certificate passes
    raw = await trio.open_tcp_stream("127.0.0.1", stack.port)
    async with Client(trio.SSLStream(raw, ctx, server_hostname=LB_HOST)) as client:
        resp = await client.request()
    assert (resp.status, resp.body) == (200, b"b0")
    assert "Secure" in (resp.header("set-cookie") or "Secure")


# ---------------------------------------------------------------------- not TLS at all


async def _https_stack(nursery: trio.Nursery, certs: Certs, tmp_path: Path, **config: Any) -> Stack:
    pem = str(tmp_path / "lb.pem")
    certs.ca.issue_cert(LB_HOST).private_key_and_cert_chain_pem.write_to_path(pem)
    spec = Listener(address="127.0.0.1", port=0, certificate=pem, key=pem)
    return await start_stack(nursery, certs, 1, listeners=await open_listeners([spec]), **config)


async def _https_get(stack: Stack, certs: Certs) -> int:
    ctx = ssl.create_default_context()
    certs.ca.configure_trust(ctx)
    raw = await trio.open_tcp_stream("127.0.0.1", stack.port)
    async with Client(trio.SSLStream(raw, ctx, server_hostname=LB_HOST)) as client:
        return (await client.request()).status


def _tls_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    return [line for line in lines if line["event"] == "client_tls_failed"]


async def test_plain_http_to_an_https_listener_is_told_so_in_plain_http(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """nginx's answer (``400 The plain HTTP request was sent to HTTPS port``) rather than a
    closed connection the user cannot explain; the body sent after the head is drained, so
    the answer is not lost to a reset."""
    stack = await _https_stack(nursery, certs, tmp_path)
    head = f"POST /upload HTTP/1.1\r\nHost: {LB_HOST}\r\nContent-Length: 262144\r\n\r\n"
    with caplog.at_level(logging.INFO, logger="tunnel_lb"):
        answer = await raw_exchange(stack.port, head.encode() + b"x" * 262144)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 400 Bad Request", answer
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    assert body == b"400 Bad Request: the plain HTTP request was sent to an HTTPS port\n"
    assert stack.backends[0].seen == []
    assert stack.records == []  # no request was read: a failed handshake, not a 400 record
    [event] = _tls_events(caplog)
    assert {k: event[k] for k in ("reason", "failed", "plain_http")} == {
        "reason": "plain HTTP request",
        "failed": 1,
        "plain_http": 1,
    }
    assert event["peer"] == "127.0.0.1"
    assert (stack.server.tls_failed, stack.server.plain_http_on_tls) == (1, 1)
    # The listener still speaks TLS to everyone else.
    assert await _https_get(stack, certs) == 200


async def test_plain_http_being_drained_holds_no_place_at_the_cap(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its 400, a plain-HTTP client still sending is drained like any refused one:
    outside the connection count, so a trickle of body bytes cannot hold the cap."""
    monkeypatch.setattr(connection, "LINGER_SECONDS", 3600.0)  # drained until it leaves
    stack = await _https_stack(nursery, certs, tmp_path, limits=Limits(max_connections=1))
    plain = await trio.open_tcp_stream("127.0.0.1", stack.port)
    head = f"POST / HTTP/1.1\r\nHost: {LB_HOST}\r\nContent-Length: 1000000\r\n\r\n"
    await plain.send_all(head.encode() + b"x")
    answer = b""
    with trio.fail_after(5):
        while not answer.endswith(b"HTTPS port\n"):
            chunk = await plain.receive_some(4096)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    await plain.send_all(b"x")  # still trickling, still being drained
    await wait_until(lambda: stack.server.connections == 0)
    assert await _https_get(stack, certs) == 200
    assert (stack.server.shed, stack.server.refused) == (0, 0)
    await trio.aclose_forcefully(plain)


async def test_a_handshake_reset_midway_is_a_failed_handshake(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path
) -> None:
    """Not only the handshakes OpenSSL refuses: one whose client vanishes is counted too."""
    stack = await _https_stack(nursery, certs, tmp_path)
    raw = await trio.open_tcp_stream("127.0.0.1", stack.port)
    ctx = ssl.create_default_context()
    tls = ssl.MemoryBIO(), ssl.MemoryBIO()
    hello = ctx.wrap_bio(*tls, server_hostname=LB_HOST)
    with pytest.raises(ssl.SSLWantReadError):
        hello.do_handshake()
    await raw.send_all(tls[1].read())  # the ClientHello, then gone before the handshake ends
    with trio.fail_after(5):
        assert await raw.receive_some(1)  # the server's answer: it is mid-handshake
    raw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(raw)  # a reset
    await wait_until(lambda: stack.server.tls_failed == 1)
    assert stack.server.plain_http_on_tls == 0
    assert await _https_get(stack, certs) == 200


async def test_a_handshake_cut_by_idle_timeout_is_a_failed_handshake(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = Limits(idle_timeout=0.2)
    stack = await _https_stack(nursery, certs, tmp_path, limits=limits)
    with caplog.at_level(logging.INFO, logger="tunnel_lb"):
        # The first byte of a TLS record, then nothing: the handshake waits for the rest.
        assert await raw_exchange(stack.port, b"\x16") == b""
    [event] = _tls_events(caplog)
    assert (event["reason"], event["failed"], event["plain_http"]) == ("timed out", 1, 0)


async def test_bytes_that_are_neither_tls_nor_http_are_a_failed_handshake(
    nursery: trio.Nursery, certs: Certs, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await _https_stack(nursery, certs, tmp_path)
    with caplog.at_level(logging.INFO, logger="tunnel_lb"):
        assert await raw_exchange(stack.port, b"\x00\x01\x02\x03" * 64) == b""
        assert await raw_exchange(stack.port, b"get / HTTP/1.1\r\n\r\n") == b""
    [event] = _tls_events(caplog)  # the second one is counted, not logged (at most every 5 s)
    assert (event["failed"], event["plain_http"]) == (1, 0)
    assert event["reason"]
    assert (stack.server.tls_failed, stack.server.plain_http_on_tls) == (2, 0)
    assert stack.backends[0].seen == []
    assert await _https_get(stack, certs) == 200


# ---------------------------------------------------------------------- the SNI table


def test_sni_table_matching() -> None:
    a, b, c = (ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) for _ in range(3))
    table = SniTable.build(
        [(["A.example.", "*.w.example"], a), (["a.example", "x.w.example"], b), (["*.a*"], c)]
    )
    assert table.pick("a.example") is a  # first listed wins
    assert table.pick("A.EXAMPLE.") is a
    assert table.pick("x.w.example") is b  # exact beats wildcard
    assert table.pick("y.w.example") is a
    for name in ("w.example", "a.b.w.example", ".w.example", "", None, "other", "z.a*"):
        assert table.pick(name) is None, name


# ---------------------------------------------------------------------- startup errors


def problems(listen: Sequence[Listener]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        listener_contexts(listen, source="lb.yaml")
    return [str(p) for p in info.value.problems]


def test_missing_files_are_named_without_a_traceback(tmp_path: Path, pems: dict[str, Pem]) -> None:
    missing = str(tmp_path / "nope.pem")
    spec = listener(pems["default"], CertificatePair(certificate=pems["a"].cert, key=missing))
    bad_default = Listener(certificate=missing, key=pems["a"].key)
    assert problems([spec, bad_default]) == [
        f'lb.yaml: engine.listen[0].certificates[0].key: cannot read "{missing}": '
        "No such file or directory",
        f'lb.yaml: engine.listen[1].certificate: cannot read "{missing}": '
        "No such file or directory",
    ]


def test_unusable_files_are_reported(tmp_path: Path, pems: dict[str, Pem]) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    mismatched = Listener(certificate=pems["a"].cert, key=pems["b"].key)
    not_pem = Listener(certificate=str(garbage), key=str(garbage))
    directory = Listener(certificate=str(tmp_path), key=pems["a"].key)
    out = problems([mismatched, not_pem, directory])
    assert len(out) == 3
    assert out[0].startswith(
        f'lb.yaml: engine.listen[0]: cannot use certificate "{pems["a"].cert}" with key '
        f'"{pems["b"].key}": '
    )
    assert out[0].endswith("(is it PEM, and does the key belong to the certificate?)")
    assert out[1].startswith(f'lb.yaml: engine.listen[1]: cannot use certificate "{garbage}"')
    assert out[2] == (
        f'lb.yaml: engine.listen[2].certificate: cannot read "{tmp_path}": Is a directory'
    )


def test_pairs_need_names(pems: dict[str, Pem], monkeypatch: pytest.MonkeyPatch) -> None:
    no_dns = listener(pems["default"], pair(pems["ip"]))
    bad_names = listener(pems["default"], pair(pems["a"], "", "a.*.example", "ok.example"))
    empty = listener(pems["default"], CertificatePair(certificate="", key=pems["a"].key))
    assert problems([no_dns, bad_names, empty]) == [
        f'lb.yaml: engine.listen[0].certificates[0]: "{pems["ip"].cert}" has no DNS names; '
        "list `hostnames`",
        "lb.yaml: engine.listen[1].certificates[0].hostnames[0]: must not be empty",
        "lb.yaml: engine.listen[1].certificates[0].hostnames[1]: "
        '"a.*.example" is not a hostname or a *.domain wildcard',
        "lb.yaml: engine.listen[2].certificates[0]: certificate and key must be set together",
    ]
    monkeypatch.setitem(sys.modules, "cryptography", None)
    assert problems([listener(pems["default"], pair(pems["a"]))]) == [
        "lb.yaml: engine.listen[0].certificates[0]: list `hostnames`: reading the names from "
        "the certificate needs the `cryptography` package, which is not installed"
    ]
    listener_contexts([listener(pems["default"], pair(pems["a"], "a.example"))])  # listed: fine


async def test_open_listeners_fails_before_binding(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"nope\.pem"):
        await open_listeners([Listener(port=0), Listener(port=0, certificate=missing, key=missing)])


def test_certificate_names_reads_the_first_certificate(pems: dict[str, Pem]) -> None:
    assert certificate_names(pems["b"].combined) == ("b.example", "www.b.example")
    assert certificate_names(pems["ip"].cert) == ()
    with pytest.raises(ValueError):
        certificate_names(pems["b"].key)


def test_plain_listeners_have_no_context(pems: dict[str, Pem]) -> None:
    ctx = listener_contexts([Listener(), listener(pems["default"])])
    assert ctx[0] is None
    assert isinstance(ctx[1], ssl.SSLContext) and ctx[1].sni_callback is None


# ---------------------------------------------------------------------- configuration


def test_certificates_load_from_the_configuration() -> None:
    text = textwrap.dedent(
        """\
        pools: [{name: p, origins: [{name: o, address: 10.0.0.1}]}]
        load_balancers: [{name: a.example, proxied: true, default_pools: [p], fallback_pool: p}]
        engine:
          listen:
            - address: 0.0.0.0
              port: 8443
              certificate: certs/default.pem
              key: certs/default.key
              certificates:
                - {certificate: certs/a.pem, key: certs/a.key}
                - certificate: certs/b.pem
                  key: certs/b.key
                  hostnames: [b.example, "*.b.example"]
        """
    )
    (spec,) = load_config_text(text, "lb.yaml").config.engine.listen
    assert spec.certificates == (
        CertificatePair(certificate="certs/a.pem", key="certs/a.key"),
        CertificatePair(
            certificate="certs/b.pem", key="certs/b.key", hostnames=("b.example", "*.b.example")
        ),
    )
    bad = text.replace("key: certs/a.key", "kee: certs/a.key")
    with pytest.raises(ConfigError) as info:
        load_config_text(bad, "lb.yaml")
    messages = [p.message for p in info.value.problems]
    assert any(m.startswith("unknown key") for m in messages)
    assert 'missing required key "key"' in messages
