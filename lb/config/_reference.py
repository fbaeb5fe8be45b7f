"""Field reference tables generated from the model's metadata.

``docs/config.md`` embeds these tables and a test compares them, so the documentation cannot
drift from the dataclasses the loader actually reads.  ``tunnel-lb check --explain-fields``
prints the same tables.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from lb.config.model import (
    AdaptiveRouting,
    CertificatePair,
    Cluster,
    Datacenter,
    EngineSettings,
    FixedResponse,
    FlapDamping,
    Limits,
    Listener,
    LoadBalancer,
    LoadShedding,
    LocalPreference,
    Monitor,
    MonitorGroup,
    MonitorGroupMember,
    Origin,
    OriginSteering,
    PassiveHealth,
    Pool,
    PoolSet,
    PoolSetMatch,
    PoolSetOverrides,
    RandomSteering,
    RetryOn,
    Rule,
    RuleOverrides,
    SessionAffinityAttributes,
    Topology,
    Tunnel,
    TunnelReplica,
)

__all__ = ["REFERENCE", "markdown_reference"]

REFERENCE: tuple[tuple[str, type, str | None], ...] = (
    ("monitors[]", Monitor, None),
    ("monitor_groups[]", MonitorGroup, None),
    ("monitor_groups[].members[]", MonitorGroupMember, None),
    ("pools[]", Pool, None),
    ("pools[].origins[]", Origin, None),
    ("pools[].origin_steering", OriginSteering, None),
    ("pools[].load_shedding", LoadShedding, None),
    ("pools[].passive_health", PassiveHealth, None),
    ("load_balancers[]", LoadBalancer, None),
    ("load_balancers[].random_steering", RandomSteering, None),
    ("load_balancers[].adaptive_routing", AdaptiveRouting, None),
    ("load_balancers[].session_affinity_attributes", SessionAffinityAttributes, None),
    ("load_balancers[].rules[]", Rule, None),
    ("load_balancers[].rules[].overrides", RuleOverrides, None),
    ("load_balancers[].rules[].fixed_response", FixedResponse, None),
    ("load_balancers[].pool_sets[]", PoolSet, None),
    ("load_balancers[].pool_sets[].match", PoolSetMatch, None),
    ("load_balancers[].pool_sets[].match.topology", Topology, None),
    ("load_balancers[].pool_sets[].overrides", PoolSetOverrides, None),
    ("load_balancers[].retry_on, pools[].retry_on", RetryOn, None),
    ("tunnels.<uuid>", Tunnel, "id"),
    ("tunnels.<uuid>.replicas[]", TunnelReplica, None),
    ("datacenters.<code>", Datacenter, "code"),
    ("engine", EngineSettings, None),
    ("engine.listen[]", Listener, None),
    ("engine.listen[].certificates[]", CertificatePair, None),
    ("engine.limits", Limits, None),
    ("engine.local_preference", LocalPreference, None),
    ("engine.cluster", Cluster, None),
    ("engine.flap_damping", FlapDamping, None),
    ("engine.passive_health", PassiveHealth, None),
)
"""(where in the file, dataclass, field filled from the mapping key) for every table."""


def markdown_reference() -> str:
    """Every table, as Markdown, in :data:`REFERENCE` order."""
    return "\n".join(_table(where, cls, key_field) for where, cls, key_field in REFERENCE)


def _table(where: str, cls: type, key_field: str | None) -> str:
    hints = typing.get_type_hints(cls)
    lines = [
        f"#### `{where}` ({cls.__name__})",
        "",
        "| Field | Type | Default | Allowed | Meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(cls):
        if f.name == key_field:
            continue
        allowed = _allowed(f.metadata)
        row = [f"`{f.name}`", _type(hints[f.name]), _default(f), allowed, f.metadata.get("doc", "")]
        cells = (cell.replace("|", "\\|").replace("<", "\\<") for cell in row)
        lines.append("| " + " | ".join(cells) + " |")
    read_only = sorted(getattr(cls, "READ_ONLY", ()))
    if read_only:
        lines += ["", "Accepted and ignored (read-only API fields): " + ", ".join(read_only) + "."]
    return "\n".join(lines) + "\n"


def _type(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if tp in names:
        return names[tp]
    if tp is Any:
        return "any"
    if dataclasses.is_dataclass(tp):
        return typing.cast(type, tp).__name__
    if origin is tuple:
        return f"list of {_type(args[0])}"
    if args and type(None) in args:
        return f"{_type(next(a for a in args if a is not type(None)))} or null"
    return f"map of {_type(args[1])}"


def _default(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "defaults"
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        return f"{len(value)} with defaults"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


def _allowed(meta: typing.Mapping[str, Any]) -> str:
    if "choices" in meta:
        return ", ".join(f"`{json.dumps(c)}`" for c in meta["choices"])
    if "range" in meta:
        low, high = meta["range"]
        return " to ".join(str(b) if isinstance(b, int) else f"{b:g}" for b in (low, high))
    if meta.get("path"):
        return "a file; relative to the configuration file"
    return ""
