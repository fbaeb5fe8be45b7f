"""TLS for the connector's listener: the server context and SNI capture.

Without a certificate in the configuration we make a throw-away self-signed one with the
``cryptography`` package.  It is not a declared runtime dependency of tunnel-lb, but it is
installed alongside ``trustme`` in the test environment; when it is missing the user gets
a clear message asking for ``certificate``/``key`` instead of a traceback.
"""

from __future__ import annotations

import contextvars
import datetime
import ipaddress
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "CertificateError",
    "check_files",
    "current_sni",
    "install_sni_capture",
    "self_signed_context",
    "server_context",
    "trust_context",
]

current_sni: contextvars.ContextVar[list[str | None]] = contextvars.ContextVar("current_sni")
"""Set by the connection task before its handshake; the SNI callback stores the name in it.

The callback runs synchronously inside ``do_handshake`` in that same task, so a context
variable ties the name to the right connection even when several connectors share one
``SSLContext`` (as tests using a single trustme CA do).
"""


def _capture(ssl_obj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
    slot = current_sni.get(None)
    if slot is not None:
        slot.append(server_name)


def install_sni_capture(ctx: ssl.SSLContext) -> None:
    """Record client SNI via ``ctx.sni_callback``, chaining any callback already set."""
    previous: Any = ctx.sni_callback  # typeshed says the name is str; it may be None
    if getattr(previous, "_lb_connector", False):
        return  # already installed (a context shared by several connectors)
    if previous is None:
        callback: Any = _capture
    else:

        def callback(ssl_obj: Any, server_name: str | None, c: ssl.SSLContext) -> Any:
            _capture(ssl_obj, server_name, c)
            return previous(ssl_obj, server_name, c)

    callback._lb_connector = True
    ctx.sni_callback = callback


class CertificateError(RuntimeError):
    """A certificate, key or CA file that cannot be loaded; the message names the file
    (``ssl`` names none: ``[Errno 2] No such file or directory``, ``[SSL] PEM lib``).

    ``what`` is the field or option that named it (``certificate``, ``key``, ``caPool``,
    ``--ca``), the message's first word: a configuration file's loader reports the problem at
    the line of that field (:func:`lb.connector.config.load_connector_config`)."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"{what} {message}")
        self.what = what


def server_context(
    certificate: str | None, key: str | None, names: Iterable[str]
) -> ssl.SSLContext:
    """The listener's context: from files when given, else self-signed for ``names``.

    Raises :class:`CertificateError` when the files cannot be loaded.
    """
    if certificate:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(certificate, key)
        except ssl.SSLError as exc:
            files = certificate + (f" with key {key}" if key else "")
            detail = f" ({exc.reason})" if exc.reason else ""  # "PEM lib" says nothing more
            raise CertificateError(
                "certificate", f"{files}: not a PEM certificate chain with its private key{detail}"
            ) from None
        except OSError as exc:
            raise _unreadable(exc, ("certificate", certificate), ("key", key)) from None
        return ctx
    return self_signed_context(names)


def check_files(certificate: str | None, key: str | None, ca_pool: str | None) -> None:
    """Load the files a connector file names, as serving would (``connector --check``):
    the certificate and key, and the ``caPool`` of https origins.  Raises
    :class:`CertificateError`."""
    if certificate:
        server_context(certificate, key, ())
    if ca_pool:
        trust_context(ca_pool)


def trust_context(cafile: str, *, what: str = "caPool") -> ssl.SSLContext:
    """``ssl.create_default_context(cafile=...)``, whose errors name the file (as ``what``,
    the option or field that gave it).  Raises :class:`CertificateError`."""
    try:
        return ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as exc:
        raise CertificateError(
            what, f"{cafile}: no PEM certificate in it ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise _unreadable(exc, (what, cafile)) from None


def _unreadable(exc: OSError, *files: tuple[str, str | None]) -> CertificateError:
    """``certificate /x/cert.pem: no such file or directory``: the first of ``files`` that
    cannot be opened (``ssl`` reports no file name), else the first one."""
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]
    named = [(what, path) for what, path in files if path]
    for what, path in named:
        try:
            Path(path).open("rb").close()
        except OSError as opened:
            reason = opened.strerror or reason
            return CertificateError(what, f"{path}: {reason[:1].lower() + reason[1:]}")
    what, path = named[0]
    return CertificateError(what, f"{path}: {reason}")


def self_signed_context(names: Iterable[str]) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate covering ``names``.

    ``names`` may hold DNS names (wildcards too) and IP addresses.  Raises RuntimeError
    naming the fix when ``cryptography`` is not installed.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "no certificate configured and the `cryptography` package is not installed: "
            "set `certificate` and `key` in the connector file, or pip install cryptography"
        ) from None
    sans: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tunnel-lb connector")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain only reads files; the directory is removed as soon as it is loaded.
    with tempfile.TemporaryDirectory(prefix="lb-connector-") as tmp:
        pem = Path(tmp) / "cert.pem"
        pem.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx.load_cert_chain(pem)
    return ctx
