"""Opening the downstream listeners from ``engine.listen``.

One socket per configured listener (no dual-stack fan-out: the address says which family).
``reuse_port`` sets SO_REUSEPORT so that several worker processes (``engine.workers``) can
accept on the same port, the kernel spreading new connections between them.

HTTPS when ``certificate`` and ``key`` are set or ``certificates`` is not empty.  Each
certificate/key pair gets its own :class:`ssl.SSLContext`, built when the listener opens and
again on every reload (:class:`TlsListener`: a reload swaps the context new connections are
wrapped with, so a renewed certificate is served without a restart); the listener's context
(``certificate``/``key``, else the first of ``certificates``) carries an ``sni_callback``
that switches the handshake to the pair whose names match the client's SNI:

* a pair's names are its ``hostnames`` when listed, else the DNS names of its certificate's
  subjectAltName, read with the ``cryptography`` package (without it, ``hostnames`` must be
  listed); the subject CN is ignored, as clients do;
* ``*.example.com`` matches exactly one extra label (``a.example.com``, not ``example.com``
  nor ``a.b.example.com``); an exact name beats a wildcard; among equals the first pair wins;
* no SNI, or a name no pair matches: the listener's default certificate.

Unreadable or unusable files are reported as a :class:`~lb.config.errors.ConfigError` naming
the listener entry and the file, before any socket is bound (:func:`listener_contexts`, which
``tunnel-lb check``, ``run`` and a reload all reach through :func:`lb.files.read_files`).
Paths come from the configuration loader, which makes relative ones relative to the file
that names them.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import trio

from lb.config.errors import ConfigError, Problem
from lb.config.model import CertificatePair, Listener

__all__ = [
    "AnyListener",
    "SniTable",
    "TlsListener",
    "bound_address",
    "certificate_names",
    "configured_addresses",
    "is_https",
    "is_https_spec",
    "listener_contexts",
    "open_listeners",
    "server_ssl_context",
]


class TlsListener(trio.abc.Listener[trio.SSLStream[trio.SocketStream]]):
    """An HTTPS listener whose TLS context can be replaced while it listens.

    :class:`trio.SSLListener` keeps the context it was made with (and cannot be subclassed);
    this one reads :attr:`context` at each accept, so a reload that assigns a new context
    serves the renewed certificate to every connection accepted afterwards, while
    connections already accepted keep the context they were wrapped with.
    """

    def __init__(self, transport_listener: trio.SocketListener, context: ssl.SSLContext) -> None:
        self.transport_listener = transport_listener
        self.context = context
        """The context of the next accepted connection (a reload assigns it)."""

    async def accept(self) -> trio.SSLStream[trio.SocketStream]:
        """The next connection, wrapped in TLS with the current :attr:`context`."""
        stream = await self.transport_listener.accept()
        return trio.SSLStream(stream, self.context, server_side=True, https_compatible=True)

    async def aclose(self) -> None:
        """Close the listening socket."""
        await self.transport_listener.aclose()


AnyListener = trio.SocketListener | TlsListener


def server_ssl_context(certificate: str, key: str) -> ssl.SSLContext:
    """A server TLS context for one certificate/key pair, HTTP/1.1 only (ALPN)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certificate, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def certificate_names(certificate: str) -> tuple[str, ...]:
    """The DNS names in the subjectAltName of the first certificate in a PEM file.

    Raises ImportError without the ``cryptography`` package, OSError when the file cannot be
    read and ValueError when it holds no PEM certificate.
    """
    from cryptography import x509  # optional: only needed when ``hostnames`` is not listed

    with open(certificate, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.DNSName))


@dataclass(frozen=True, slots=True)
class SniTable:
    """SNI name -> context; used as the default context's ``sni_callback``."""

    exact: Mapping[str, ssl.SSLContext] = field(default_factory=dict)
    wildcard: Mapping[str, ssl.SSLContext] = field(default_factory=dict)
    """``*.example.com`` is stored under ``example.com``."""

    @classmethod
    def build(cls, entries: Sequence[tuple[Sequence[str], ssl.SSLContext]]) -> SniTable:
        """A table from (names, context) pairs, earlier entries winning on equal names."""
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for names, ctx in entries:
            for raw in names:
                name = _normalize(raw)
                if name.startswith("*.") and "*" not in name[2:]:
                    wildcard.setdefault(name[2:], ctx)
                elif name and "*" not in name:
                    exact.setdefault(name, ctx)
        return cls(exact, wildcard)

    def pick(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for ``server_name``, or None for the default certificate."""
        if not server_name:
            return None
        name = _normalize(server_name)
        ctx = self.exact.get(name)
        if ctx is None:
            label, dot, parent = name.partition(".")
            if dot and label and parent:
                ctx = self.wildcard.get(parent)
        return ctx

    def __call__(
        self, ssl_object: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        chosen = self.pick(server_name)
        if chosen is not None:
            ssl_object.context = chosen


def _normalize(name: str) -> str:
    return name.strip().lower().rstrip(".")


def _name_problem(name: str) -> str:
    """Why a listed hostname can never match, or ``''``."""
    plain = _normalize(name)
    if not plain:
        return "must not be empty"
    rest = plain[2:] if plain.startswith("*.") else plain
    if not rest or "*" in rest or ".." in rest or rest.startswith("."):
        return f'"{name}" is not a hostname or a *.domain wildcard'
    return ""


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        text = str(exc).split(" (_ssl.c:", 1)[0]
        return f"{text} (is it PEM, and does the key belong to the certificate?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))


def _load_pair(
    certificate: str, key: str, where: str, problems: _Problems
) -> ssl.SSLContext | None:
    if not certificate or not key:
        problems.add(where, "certificate and key must be set together")
        return None
    readable = True
    for name, path in (("certificate", certificate), ("key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            problems.add(f"{where}.{name}", f'cannot read "{path}": {_reason(exc)}')
            readable = False
    if not readable:
        return None
    try:
        return server_ssl_context(certificate, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        message = f'cannot use certificate "{certificate}" with key "{key}": {_reason(exc)}'
        problems.add(where, message)
        return None


def _pair_names(pair: CertificatePair, where: str, problems: _Problems) -> tuple[str, ...]:
    if pair.hostnames:
        for i, name in enumerate(pair.hostnames):
            if problem := _name_problem(name):
                problems.add(f"{where}.hostnames[{i}]", problem)
        return pair.hostnames
    try:
        names = certificate_names(pair.certificate)
    except ImportError:
        message = (
            "list `hostnames`: reading the names from the certificate needs the "
            "`cryptography` package, which is not installed"
        )
        problems.add(where, message)
        return ()
    except (OSError, ValueError) as exc:
        problems.add(
            f"{where}.certificate", f'cannot read names from "{pair.certificate}": {_reason(exc)}'
        )
        return ()
    if not names:
        problems.add(where, f'"{pair.certificate}" has no DNS names; list `hostnames`')
    return names


def is_https_spec(spec: Listener) -> bool:
    """Whether ``spec`` describes an HTTPS listener: ``certificate``/``key`` or any of
    ``certificates`` set (else plain HTTP)."""
    return bool(spec.certificate or spec.key or spec.certificates)


def configured_addresses(listen: Sequence[Listener]) -> list[tuple[str, int]]:
    """The configured (address, port) of each listener, port 0 unresolved: what a reloaded
    ``engine.listen`` entry is compared with to tell whether it moved."""
    return [(spec.address, spec.port) for spec in listen]


def _listener_context(spec: Listener, where: str, problems: _Problems) -> ssl.SSLContext | None:
    if not is_https_spec(spec):
        return None
    default: ssl.SSLContext | None = None
    if spec.certificate or spec.key:
        default = _load_pair(spec.certificate, spec.key, where, problems)
    entries: list[tuple[Sequence[str], ssl.SSLContext]] = []
    for i, pair in enumerate(spec.certificates):
        at = f"{where}.certificates[{i}]"
        ctx = _load_pair(pair.certificate, pair.key, at, problems)
        names = _pair_names(pair, at, problems) if ctx is not None else ()
        if ctx is not None:
            entries.append((names, ctx))
    if default is None and not (spec.certificate or spec.key) and entries:
        default = entries[0][1]
    if default is not None and entries:
        default.sni_callback = SniTable.build(entries)
    return default


def listener_contexts(
    listen: Sequence[Listener], *, source: str = "configuration"
) -> list[ssl.SSLContext | None]:
    """The server TLS context of every listener (None for plain HTTP), every file loaded.

    Raises:
        ConfigError: with one problem per unreadable or unusable file (``source`` is the
            file name the problems carry), so that startup fails with a clear message.
    """
    problems = _Problems()
    out = [
        _listener_context(spec, f"engine.listen[{i}]", problems) for i, spec in enumerate(listen)
    ]
    if problems.items:
        raise ConfigError(
            [
                Problem(file=source, line=None, path=path, message=msg)
                for path, msg in problems.items
            ]
        )
    return out


async def open_listeners(
    listen: Sequence[Listener],
    *,
    contexts: Sequence[ssl.SSLContext | None] | None = None,
    reuse_port: bool = False,
    backlog: int = 1024,
) -> list[AnyListener]:
    """Bind every configured listener; port 0 picks a free port.

    ``contexts`` are the listeners' TLS contexts as :func:`listener_contexts` made them
    (loaded here when None).

    Raises ConfigError (see :func:`listener_contexts`) before binding when a certificate or
    key cannot be used.
    """
    if contexts is None:
        contexts = listener_contexts(listen)  # every certificate loads before anything binds
    out: list[AnyListener] = []
    try:
        for spec, ctx in zip(listen, contexts, strict=True):
            sock = await _bind(spec.address, spec.port, reuse_port=reuse_port, backlog=backlog)
            plain = trio.SocketListener(sock)
            if ctx is not None:
                out.append(TlsListener(plain, ctx))
            else:
                out.append(plain)
    except BaseException:
        for done in out:
            await done.aclose()
        raise
    return out


async def _bind(host: str, port: int, *, reuse_port: bool, backlog: int) -> trio.socket.SocketType:
    infos = await trio.socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, type_, proto, _, addr = infos[0]
    sock = trio.socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind(addr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def is_https(listener: AnyListener) -> bool:
    """Whether connections from ``listener`` speak TLS."""
    return isinstance(listener, TlsListener)


def bound_address(listener: AnyListener) -> tuple[str, int]:
    """The (host, port) ``listener`` is bound to."""
    inner = listener.transport_listener if isinstance(listener, TlsListener) else listener
    name = inner.socket.getsockname()
    return str(name[0]), int(name[1])
