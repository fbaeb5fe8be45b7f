"""Recognising tunnel endpoint addresses (R46)."""

from __future__ import annotations

import re

TUNNEL_SUFFIX = ".cfargotunnel.com"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def tunnel_uuid(address: str) -> str | None:
    """The UUID of a ``<uuid>.cfargotunnel.com`` address, or None for any other address.

    R46: the UUID is lowercase hex with dashes; the suffix is matched case-insensitively
    because DNS names are case-insensitive.
    """
    lowered = address.lower().rstrip(".")
    if not lowered.endswith(TUNNEL_SUFFIX):
        return None
    uuid = address.rstrip(".")[: -len(TUNNEL_SUFFIX)]
    return uuid if _UUID.match(uuid) else None


def looks_like_tunnel(address: str) -> bool:
    """True for any address under cfargotunnel.com, valid UUID or not."""
    return address.lower().rstrip(".").endswith(TUNNEL_SUFFIX)
