"""``engine.state_file``'s document and file handling, in process: what is kept, what is
refused, and that a bad file is one log line and never an error."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from lb.config.model import (
    Config,
    EngineSettings,
    FlapDamping,
    LoadBalancer,
    Monitor,
    Origin,
    PassiveHealth,
    Pool,
)
from lb.core.health import Health, ProbeResult
from lb.engine import Engine
from lb.statefile import load_state, write_state


def make_config(**engine: object) -> Config:
    pool = Pool(
        name="a",
        monitor="m",
        origins=(Origin(name="a-0", address="10.0.0.1"), Origin(name="a-1", address="10.0.0.2")),
    )
    return Config(
        monitors=(Monitor(id="m"),),
        pools=(pool,),
        load_balancers=(
            LoadBalancer(
                name="app.example.com", proxied=True, default_pools=("a",), fallback_pool="a"
            ),
        ),
        engine=EngineSettings(**engine),  # type: ignore[arg-type]
    )


def probe(engine: Engine, endpoint: str, ok: bool, at: float) -> None:
    engine.apply(ProbeResult(pool="a", endpoint=endpoint, vantage="local", at=at, ok=ok))


def health(engine: Engine) -> dict[str, Health]:
    return {e.name: e.health for e in engine.book.snapshot().pools["a"].endpoints}


def test_health_sessions_and_damping_come_back_on_another_clock() -> None:
    cfg = make_config(flap_damping=FlapDamping())
    old = Engine(cfg, now=1000.0)
    probe(old, "a-0", True, 1000.0)
    for i, ok in enumerate([True, False, True, False]):
        probe(old, "a-1", ok, 1001.0 + i)
    old.sessions.put("app.example.com", ("client",), "a/a-0", 1004.0)
    penalty = old.book.damping("a", "a-1", 1004.0)
    doc = json.loads(json.dumps(old.save_state(now=1004.0, wall=50_000.0)))

    new = Engine(cfg, now=7.0)  # a new process: another engine clock, 10 s later
    assert health(new) == {"a-0": Health.UNKNOWN, "a-1": Health.UNKNOWN}
    assert not new.ready
    assert new.load_state(doc, now=7.0, wall=50_010.0, max_age=300) == ""
    assert health(new) == {"a-0": Health.HEALTHY, "a-1": Health.UNHEALTHY}
    assert new.ready
    # the damping penalty is the old one, decayed by the 10 s in between
    assert penalty is not None and penalty[1]
    restored = new.book.damping("a", "a-1", 7.0)
    assert restored is not None and restored[1]
    assert restored[0] == pytest.approx(penalty[0] * 0.5 ** (10 / 60), rel=1e-3)
    assert new.sessions.peek("app.example.com", ("client",), 7.0, 60.0) == "a/a-0"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda d: {**d, "format": "something else"}, "not a tunnel-lb state file"),
        (lambda d: {**d, "config_hash": "0" * 16}, "written for another configuration"),
        (lambda d: {**d, "written_at": d["written_at"] - 301}, "stale: written 301s ago"),
        (lambda d: {**d, "endpoints": [{"pool": "a"}]}, "malformed: no 'damping'"),
        (lambda d: {**d, "sessions": [["zz", "a/a-0", 1]]}, "malformed: non-hexadecimal"),
        (lambda d: [], "not a tunnel-lb state file"),
    ],
)
def test_a_document_that_does_not_fit_is_refused_whole(change: object, reason: str) -> None:
    cfg = make_config()
    old = Engine(cfg)
    probe(old, "a-0", True, 1.0)
    doc = change(old.save_state(now=1.0, wall=1000.0))  # type: ignore[operator]
    new = Engine(cfg)
    assert new.load_state(doc, now=0.0, wall=1000.0, max_age=300).startswith(reason)
    assert health(new)["a-0"] is Health.UNKNOWN


def test_the_engine_section_does_not_change_the_hash() -> None:
    old = Engine(make_config())
    probe(old, "a-0", True, 1.0)
    doc = old.save_state(now=1.0, wall=1000.0)
    new = Engine(make_config(drain_timeout=5.0))
    assert new.load_state(doc, now=0.0, wall=1000.0, max_age=300) == ""
    other = dataclasses.replace(
        make_config(), pools=(dataclasses.replace(make_config().pools[0], minimum_origins=2),)
    )
    assert Engine(other).load_state(doc, now=0.0, wall=1000.0, max_age=300) != ""


def good_file(tmp_path: Path) -> tuple[Config, Path]:
    path = tmp_path / "state.json"
    cfg = make_config(state_file=str(path))
    old = Engine(cfg)
    probe(old, "a-0", True, 1.0)
    write_state(old, str(path), now=1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left
    return cfg, path


def test_a_written_file_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg, path = good_file(tmp_path)
    new = Engine(cfg)
    with caplog.at_level(logging.INFO):
        assert load_state(new, str(path), now=0.0)
    assert health(new)["a-0"] is Health.HEALTHY
    assert [r.getMessage() for r in caplog.records] == ["state_file_loaded"]


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "foreign", "empty", "directory"])
def test_a_bad_file_is_one_warning_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    cfg, path = good_file(tmp_path)
    text = path.read_bytes()
    if damage == "corrupt":
        path.write_bytes(b"\x00\xff" + text[2:])
    elif damage == "truncated":
        path.write_bytes(text[: len(text) // 2])
    elif damage == "foreign":
        path.write_text('{"hello": "world"}')
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
        path.mkdir()
    new = Engine(cfg)
    with caplog.at_level(logging.INFO):
        assert not load_state(new, str(path), now=0.0)
    assert health(new)["a-0"] is Health.UNKNOWN
    assert [(r.getMessage(), r.levelno) for r in caplog.records] == [
        ("state_file_ignored", logging.WARNING)
    ]


def test_a_missing_file_is_a_fresh_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    new = Engine(make_config())
    with caplog.at_level(logging.INFO):
        assert not load_state(new, str(tmp_path / "none.json"), now=0.0)
    assert [r.getMessage() for r in caplog.records] == ["state_file_absent"]


def test_a_passive_health_ejection_comes_back_on_another_clock() -> None:
    cfg = make_config(passive_health=PassiveHealth(consecutive_5xx=2, base_ejection_time=30))
    old = Engine(cfg, now=1000.0)
    probe(old, "a-0", True, 1000.0)
    probe(old, "a-1", True, 1000.0)
    for _ in range(2):
        old.outcome("a", "a-1", status=503, now=1001.0)
    assert health(old) == {"a-0": Health.HEALTHY, "a-1": Health.UNHEALTHY}
    doc = json.loads(json.dumps(old.save_state(now=1005.0, wall=50_000.0)))

    new = Engine(cfg, now=7.0)  # 10 s later on another clock: 16 s of the 30 s remain
    assert new.load_state(doc, now=7.0, wall=50_010.0, max_age=300) == ""
    assert health(new) == {"a-0": Health.HEALTHY, "a-1": Health.UNHEALTHY}
    ejector = new.book.passive("a", "a-1")
    assert ejector is not None and ejector.reason == "passive: 2 consecutive 503"
    assert ejector.until == pytest.approx(7.0 + 16.0)
    probe(new, "a-1", True, 22.0)  # too early: still out
    assert health(new)["a-1"] is Health.UNHEALTHY
    probe(new, "a-1", True, 23.5)
    assert health(new)["a-1"] is Health.HEALTHY
    # a file written before passive health existed has no "passive": still taken
    for e in doc["endpoints"]:
        del e["passive"]
    assert Engine(cfg, now=7.0).load_state(doc, now=7.0, wall=50_010.0, max_age=300) == ""
    doc["endpoints"][0]["passive"] = {"ejected": "yes"}
    assert Engine(cfg, now=7.0).load_state(doc, now=7.0, wall=50_010.0, max_age=300) == (
        "malformed: no 'since_age'"
    )
