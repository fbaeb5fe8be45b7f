"""TLS contexts for a loopback server and its client, both from one throw-away CA."""

from __future__ import annotations

import ssl

import trustme


def contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context whose certificate ``ca`` issued for 127.0.0.1, localhost and
    app.example.com, and a client context that trusts ``ca``."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost", "app.example.com").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client
