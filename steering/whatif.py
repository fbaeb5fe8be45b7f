"""The checks of a what-if request: its client IP and its entry data center.

Why a module: ``tunnel-lb explain`` and the admin listener's ``/explain`` ask the same
question and must refuse the same input.  An unknown data center is not an error the router
sees (it steers such a request by ``default_pools``, as it must for live traffic), so
without this check a typo answered a plausible decision for another data center.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection

from lb.config import did_you_mean

__all__ = ["client_ip_problem", "datacenter_code", "datacenter_problem"]


def client_ip_problem(text: str) -> str:
    """Why ``text`` cannot be a client IP; ``""`` when it can (or is empty: no IP)."""
    if not text:
        return ""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return "not an IP address"
    return ""


def datacenter_code(text: str) -> str:
    """A data center code as written by hand (``fra``, `` FRA``) in the configuration's form."""
    return text.strip().upper()


def datacenter_problem(code: str, known: Collection[str]) -> str:
    """Why ``code`` (see :func:`datacenter_code`) names no data center of the configuration;
    ``""`` when it does (or is empty: no data center)."""
    if not code or code in known:
        return ""
    hint = did_you_mean(code, sorted(known))
    return f"unknown data center{hint}; a configuration adds codes under `datacenters`"
