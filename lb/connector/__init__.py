"""A local stand-in for cloudflared's ingress: the "tunnel endpoint" of tests and demos.

``tunnel-lb connector FILE`` (or :func:`serve_connector` in code) listens for HTTPS the way
a tunnel's public hostname is reached through Cloudflare, and routes each request by Host
and path through cloudflared-style ingress rules (R48, docs/connector.md) to an
origin, a fixed status or a ``hello_world`` page naming the tunnel replica, or carries a
WebSocket to a private TCP service (``tcp://``, ``ssh://``, ``bastion``...) whose client is
``tunnel-lb access tcp`` (:mod:`lb.access`).  See ``docs/connector.md``.
"""

from lb.connector.config import ConnectorConfig, load_connector_config
from lb.connector.ingress import IngressRule, match_rule
from lb.connector.server import serve_connector
from lb.connector.stats import ConnectorStats, RequestRecord

__all__ = [
    "ConnectorConfig",
    "ConnectorStats",
    "IngressRule",
    "RequestRecord",
    "load_connector_config",
    "match_rule",
    "serve_connector",
]
