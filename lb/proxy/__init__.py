"""The proxy data path: HTTP/1.1 downstream, pooled keep-alive upstream (lb/proxy/http1.py).

Public API (docs/proxy.md):

* :func:`serve_proxy` / :class:`ProxyServer`: serve an :class:`~lb.engine.Engine`'s load
  balancers on listeners, with graceful shutdown;
* :class:`ProxyHooks`, :class:`RequestRecord`, :class:`Attempt`: what the proxy reports;
* :func:`open_listeners`: bind ``engine.listen`` (HTTP or HTTPS, optional SO_REUSEPORT).

No prometheus_client here: metrics are the hooks' business.
"""

from lb.proxy.hooks import Attempt, ProxyHooks, RequestRecord
from lb.proxy.listeners import open_listeners
from lb.proxy.server import ProxyServer, serve_proxy

__all__ = ["Attempt", "ProxyHooks", "ProxyServer", "RequestRecord", "open_listeners", "serve_proxy"]
