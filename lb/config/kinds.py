"""Which of our file formats a document looks like, to name a file given to the wrong command.

``tunnel-lb`` reads three YAML formats: load balancer configurations, simulation scenarios
and connector files.  Given the wrong one, every command's own validator would list each
top-level key as unknown, which hides the actual mistake.  Each loader asks
:func:`wrong_kind` first and reports one line instead: what the file looks like and which
command reads it.  A document that shows any sign of the expected format is never called
wrong here, so a real file with a typo still gets the precise per-key errors.
"""

from __future__ import annotations

from lb.config._source import Node

__all__ = ["CONFIG", "CONNECTOR", "SCENARIO", "wrong_kind"]

CONFIG = "a load balancer configuration"
SCENARIO = "a simulation scenario"
CONNECTOR = "a connector file"

_COMMAND = {
    CONFIG: "tunnel-lb check, run, explain or probe",
    SCENARIO: "tunnel-lb simulate",
    CONNECTOR: "tunnel-lb connector",
}
_CONFIG_SECTIONS = frozenset(
    {"monitors", "pools", "load_balancers", "tunnels", "datacenters", "connect_to", "engine"}
)
_API_MARKERS = frozenset({"result", "origins", "default_pools", "expected_codes"})
"""Keys of Cloudflare API objects and envelopes, which configurations may also be."""
_SCENARIO_KEYS = frozenset({"traffic", "timeline", "expect"})


def _signs(node: Node) -> set[str]:
    """The kinds ``node`` shows a sign of (usually none or one)."""
    value = node.value
    if isinstance(value, list):
        items = [item.value for item in value if isinstance(item.value, dict)]
        return {CONFIG} if any(_API_MARKERS & set(item) for item in items) else set()
    if not isinstance(value, dict):
        return set()
    keys = set(value)
    signs = set()
    if keys & (_CONFIG_SECTIONS | _API_MARKERS):
        signs.add(CONFIG)
    if "config" in keys or keys & _SCENARIO_KEYS:
        signs.add(SCENARIO)
    if "ingress" in keys or "originRequest" in keys:
        signs.add(CONNECTOR)
    return signs


def wrong_kind(node: Node, expected: str) -> str | None:
    """The one-line problem for a document of another kind than ``expected``, or None.

    None also when the document shows a sign of ``expected`` or of no kind at all: the
    caller's own validation then says what is wrong.
    """
    signs = _signs(node)
    if expected in signs or len(signs) != 1:
        return None
    (kind,) = signs
    return f"this looks like {kind}, not {expected}; it is read by {_COMMAND[kind]}"
