"""``--speed X``: one scenario and its configuration, every time divided by X, as files.

Why files
=========

The rehearsal compares a real run with simulated ones, so both must run the *same* scaled
scenario.  Scaling the raw documents and writing them out (the scenario beside its scaled
configuration) gives one artefact that ``tunnel-lb simulate`` loads like any scenario and
``tunnel-lb run`` loads like any configuration; nothing downstream knows about speed.

What is scaled: every time of the scenario (duration, report interval, tick, round trip,
timeline ``at`` / ``until`` / ``latency`` / ``period`` / ``down_for``, traffic steps, keep-alive
idle, expectation ``between`` / ``within``) and of the configuration (monitor ``interval`` and
``timeout``, ``engine.minimum_interval``, the engine's limits and idle timeouts, the affinity
TTL); keep-alive random closes, a rate per second, are multiplied by X.  Traffic rates
(requests per second) are not: a window holds X times fewer requests.

``--rate F`` multiplies every traffic rate by F, for a machine that cannot drive the
scenario's rates for real (the driver and the LB share its cores).  Count bounds of
``requests`` and ``errors`` expectations follow both: they are multiplied by F / X.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SpeedError", "scaled_files"]

MIN_INTERVAL = 1.0
"""The configuration's lowest monitor interval (docs/config.md)."""


class SpeedError(ValueError):
    """A speed the scenario cannot be scaled by (one line)."""


def _div(value: Any, speed: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return round(value / speed, 6)


def _scale_keys(d: Any, keys: tuple[str, ...], speed: float) -> None:
    if isinstance(d, dict):
        for k in keys:
            if k in d and d[k] is not None:
                d[k] = _div(d[k], speed)


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def scale_config(raw: dict[str, Any], speed: float) -> dict[str, Any]:
    """The configuration document with its intervals and timeouts divided by ``speed``."""
    out = copy.deepcopy(raw)
    intervals: list[float] = []
    for m in out.get("monitors") or []:
        if isinstance(m, dict):
            m.setdefault("interval", 60)
            m.setdefault("timeout", 5)
            _scale_keys(m, ("interval", "timeout"), speed)
            intervals.append(float(m["interval"]))
    low = min(intervals, default=MIN_INTERVAL)
    if low < MIN_INTERVAL:
        raise SpeedError(
            f"--speed {speed:g} makes a monitor interval {low:g} s, below the "
            f"{MIN_INTERVAL:g} s minimum; use a lower speed"
        )
    for lb in out.get("load_balancers") or []:
        _scale_keys(lb, ("session_affinity_ttl",), speed)
    engine = out.setdefault("engine", {})
    engine["fractional_monitor_times"] = True  # a scaled timeout is rarely whole seconds
    engine["minimum_interval"] = max(MIN_INTERVAL, min(low, engine.get("minimum_interval", 10)))
    _scale_keys(engine, ("upstream_idle_timeout", "drain_timeout"), speed)
    limits = engine.setdefault("limits", {})
    limits.setdefault("connect_timeout", 5.0)
    limits.setdefault("request_timeout", 100.0)
    _scale_keys(limits, ("connect_timeout", "request_timeout", "idle_timeout"), speed)
    return out


def _rate(value: Any, factor: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return round(value * factor, 6)


def scale_scenario(raw: dict[str, Any], speed: float, rate: float = 1.0) -> dict[str, Any]:
    """The scenario document with every time divided by ``speed`` and every rate multiplied
    by ``rate`` (config left as is)."""
    out = copy.deepcopy(raw)
    out.setdefault("report_interval", 10.0)
    out.setdefault("tick", 0.1)
    _scale_keys(out, ("duration", "report_interval", "tick"), speed)
    if isinstance(out.get("tick"), float):
        out["tick"] = max(0.001, out["tick"])
    network = out.setdefault("network", {})
    network.setdefault("rtt", 0.02)
    _scale_keys(network, ("rtt",), speed)
    for spec in (network.get("keep_alive") or {}).values():
        _scale_keys(spec, ("idle",), speed)
        if isinstance(spec, dict) and "random" in spec:  # closes per second: X times more
            spec["random"] = _rate(spec["random"], speed)
    for t in (out.get("traffic") or {}).values():
        if isinstance(t, dict) and isinstance(t.get("rate"), list):
            for step in t["rate"]:
                _scale_keys(step, ("at",), speed)
                if isinstance(step, dict) and "rate" in step:
                    step["rate"] = _rate(step["rate"], rate)
        elif isinstance(t, dict):
            t["rate"] = _rate(t.get("rate"), rate)
    for e in out.get("timeline") or []:
        _scale_keys(e, ("at", "until", "latency", "period", "down_for"), speed)
    for x in out.get("expect") or []:
        for kind, bound in x.items() if isinstance(x, dict) else ():
            if isinstance(bound, dict) and kind in ("requests", "errors"):
                for key in ("at_least", "at_most"):
                    if key in bound:
                        bound[key] = _rate(bound[key], rate / speed)
            if isinstance(bound, dict):
                _scale_keys(bound, ("within",), speed)
                if isinstance(bound.get("between"), list):
                    bound["between"] = [_div(v, speed) for v in bound["between"]]
    return out


def scaled_files(
    scenario: Path, speed: float, directory: Path, rate: float = 1.0
) -> tuple[Path, Path]:
    """Write ``scenario`` scaled by ``speed`` (and ``rate``) into ``directory``; return
    (scenario, config).

    The configuration is always written beside the scenario (an inline one moved out), so
    the rehearsal can add its own fields to a copy of it.
    """
    if speed <= 0 or rate <= 0:
        raise SpeedError("--speed and --rate must be above 0")
    raw = _read(scenario)
    if not isinstance(raw, dict):
        raise SpeedError(f"{scenario}: not a scenario mapping")
    config = raw.get("config")
    raw_config = _read(scenario.parent / config) if isinstance(config, str) else config
    if not isinstance(raw_config, dict):
        raise SpeedError(f"{scenario}: config is neither a file nor a mapping")
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "config.json"
    config_path.write_text(json.dumps(scale_config(raw_config, speed), indent=1), "utf-8")
    scaled = scale_scenario(raw, speed, rate)
    scaled["config"] = config_path.name
    scenario_path = directory / scenario.name
    scenario_path.write_text(yaml.safe_dump(scaled, sort_keys=False), "utf-8")
    return scenario_path, config_path
