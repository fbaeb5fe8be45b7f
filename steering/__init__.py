"""Pure steering: pick a pool, then an endpoint, for one request.

No trio, httpx, yaml or prometheus_client here: the proxy and the simulator call the same
:class:`Router`, which is what makes a simulation show what the process does.
"""

from steering.affinity import COOKIE_NAME as COOKIE_NAME
from steering.affinity import HeaderSessions as HeaderSessions
from steering.router import Router as Router
from steering.types import Affinity as Affinity
from steering.types import Decision as Decision
from steering.types import DecisionReason as DecisionReason
from steering.types import Live as Live
from steering.types import Request as Request

__all__ = [
    "COOKIE_NAME",
    "Affinity",
    "Decision",
    "DecisionReason",
    "HeaderSessions",
    "Live",
    "Request",
    "Router",
]
