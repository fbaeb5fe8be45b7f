"""Fixtures of the monitor tests: a test CA, server contexts and the real transport."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
import trustme

from monitors import NetworkTransport


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The CA the probes trust."""
    return trustme.CA()


@pytest.fixture(scope="session")
def rogue_ca() -> trustme.CA:
    """A CA nobody trusts."""
    return trustme.CA()


@pytest.fixture
def server_context(ca: trustme.CA) -> Callable[..., ssl.SSLContext]:
    """``server_context(*names, ca=...)``: a fresh server context with a certificate for names."""

    def make(*names: str, issuer: trustme.CA | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        (issuer or ca).issue_cert(*names).configure_cert(ctx)
        return ctx

    return make


@pytest.fixture
def transport(ca: trustme.CA) -> NetworkTransport:
    """The real transport, trusting the test CA."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return NetworkTransport(ssl_context=ctx)
