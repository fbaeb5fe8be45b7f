"""Fixtures of the proxy tests: certificates (one CA per test) and a proxy stack."""

from __future__ import annotations

import pytest
from proxy_support import Certs, make_certs


@pytest.fixture
def certs() -> Certs:
    return make_certs()
