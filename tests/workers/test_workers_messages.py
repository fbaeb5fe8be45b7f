"""The worker pipe messages: every kind survives encode/decode, and decode refuses anything
that is not one of them with a one-line reason (lb/workers.py, "protocol")."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import pickle
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

from core_builders import make_config, make_pool, result

from lb.config.model import Listener
from lb.core.health import Health, ProbeResult
from lb.core.passive import Outcome, Saved
from lb.workers import (
    FROM_CHILD,
    FROM_PARENT,
    ConfigSwap,
    Ejection,
    Hello,
    Kind,
    Message,
    Outcomes,
    Probe,
    ProtocolError,
    Ready,
    Report,
    Restore,
    Shutdown,
    decode,
    encode,
)

CONFIG = make_config(make_pool("a", 2))


def same_probe(a: ProbeResult, b: ProbeResult) -> bool:
    """Equal but for ``at``, which crosses CLOCK_MONOTONIC and so moves by the time between
    encoding and decoding (well under a minute)."""
    return dataclasses.replace(a, at=b.at) == b and abs(a.at - b.at) < 60


def same_ejection(a: Ejection, b: Ejection) -> bool:
    """Equal but for the times, which cross CLOCK_MONOTONIC together: each moves by the
    same small amount, so the ejection's length stays what it was."""
    x, y = a.state, b.state
    moved = y.since - x.since
    return (
        (a.pool, a.endpoint, x.ejected, x.ejections, x.reason)
        == (b.pool, b.endpoint, y.ejected, y.ejections, y.reason)
        and abs(moved) < 60
        and math.isclose(y.until - y.since, x.until - x.since, abs_tol=1e-6)
        and (x.returned_at is None) == (y.returned_at is None)
        and (
            x.returned_at is None
            or y.returned_at is None
            or abs(y.returned_at - x.returned_at - moved) < 1e-3
        )
    )


EJECTED = Ejection("a", "a-0", Saved(True, 10.0, 40.0, 1, None, "passive: 5 consecutive 502"))
RETURNED = Ejection("a", "a-0", Saved(False, 10.0, 40.0, 1, 41.5, "passive: 5 consecutive 502"))


def messages() -> list[Message]:
    probe = result("a", "a-0", False, at=12.5, status=503, rtt=0.25, member="m1")
    return [
        Hello(
            config=CONFIG,
            secret=b"\x00\x01secret",
            listen=(("127.0.0.1", 8443), ("::1", 8080)),
            listeners=(Listener(address="127.0.0.1", port=8443),),
            opened_as=(("127.0.0.1", 0),),
            worker=3,
            seed=42,
        ),
        Restore(
            states=(("a", "a-0", "local", Health.HEALTHY), ("a", "a-1", "local", Health.UNKNOWN)),
            rtt=(("a", "local", 0.125),),
            replay=((dataclasses.replace(probe, rtt=None), 2),),
        ),
        Restore(states=(), rtt=(), replay=(), saved={"version": 1, "endpoints": []}),
        Restore(states=(), rtt=(), replay=(), ejected=(EJECTED,)),
        EJECTED,
        RETURNED,
        Probe(probe),
        Probe(result("a", "a-1", True)),
        ConfigSwap(CONFIG),
        Shutdown(),
        Ready(pid=1234, listen=(("127.0.0.1", 8443),)),
        Report(
            metrics={"requests": [[["lb", "p", "e", "200"], 3.0]]},
            live={"in_flight": {"a/a-0": 2}},
            clients=5,
            active=1,
        ),
        Report(metrics={}),
        Outcomes(
            (
                ("a", "a-0", Outcome(502), 3),
                ("a", "a-1", Outcome(200), 1),
                ("a", "a-0", Outcome(522, connect_failed=True, detail="connect_timeout"), 2),
            )
        ),
    ]


@pytest.mark.parametrize("message", messages(), ids=lambda m: m.kind.value)
async def test_every_message_survives_encode_and_decode(message: Message) -> None:
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert list(json.loads(line)) == [message.kind.value]
    decoded = decode(line)
    assert type(decoded) is type(message)
    match message, decoded:
        case Probe(), Probe():
            assert same_probe(message.result, decoded.result)
        case Ejection(), Ejection():
            assert same_ejection(message, decoded)
        case Restore(), Restore():
            assert (decoded.states, decoded.rtt, decoded.saved) == (
                message.states,
                message.rtt,
                message.saved,
            )
            assert len(decoded.ejected) == len(message.ejected)
            assert all(
                same_ejection(a, b) for a, b in zip(message.ejected, decoded.ejected, strict=True)
            )
            assert [n for _, n in decoded.replay] == [n for _, n in message.replay]
            assert all(
                same_probe(a, b)
                for (a, _), (b, _) in zip(message.replay, decoded.replay, strict=True)
            )
        case _:
            assert decoded == message


def test_every_kind_has_a_message_type() -> None:
    assert {m.kind for m in messages()} == set(Kind)


def _pickled(obj: object) -> str:
    return base64.b64encode(pickle.dumps(obj)).decode()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "not a JSON line"),
        (b"{not json", "not a JSON line"),
        (b'"probe"', "not an object with exactly one key"),
        (b"[]", "not an object with exactly one key"),
        (b"{}", "not an object with exactly one key"),
        (b'{"shutdown":true,"probe":{}}', "not an object with exactly one key"),
        (b'{"reboot":true}', "unknown message kind 'reboot'"),
        (b'{"shutdown":false}', "malformed shutdown message"),
        (b'{"probe":{"pool":"a"}}', "malformed probe message: KeyError"),
        (b'{"probe":[]}', "malformed probe message: TypeError"),
        (b'{"ready":{"pid":"1","listen":[]}}', "malformed ready message: TypeError"),
        (b'{"ready":{"pid":1,"listen":[["h"]]}}', "malformed ready message: TypeError"),
        (b'{"report":{"live":{}}}', "malformed report message: KeyError"),
        (b'{"report":{"metrics":[]}}', "malformed report message: TypeError"),
        (b'{"config":"bm90IGEgcGlja2xl"}', "malformed config message"),
        (
            b'{"restore":{"states":[["a","a-0","local","sick"]],"rtt":[],"replay":[]}}',
            "malformed restore message: ValueError",
        ),
        (
            json.dumps({"config": _pickled(["not", "a", "config"])}).encode(),
            "malformed config message: TypeError: expected a Config, got list",
        ),
        (b'{"config":"gAU="}', "malformed config message: EOFError"),  # a cut pickle
        (b'{"outcomes":{}}', "malformed outcomes message: TypeError"),
        (b'{"outcomes":[["a","a-0",502,false,""]]}', "malformed outcomes message: TypeError"),
        (b'{"outcomes":[["a","a-0","502",false,"",1]]}', "malformed outcomes message: TypeError"),
        (b'{"outcomes":[["a","a-0",502,0,"",1]]}', "malformed outcomes message: TypeError"),
        (b'{"outcomes":[["a",7,502,false,"",1]]}', "malformed outcomes message: TypeError"),
        (b'{"outcomes":[["a","a-0",502,false,"",0]]}', "malformed outcomes message: ValueError"),
        (b'{"outcomes":[["a","a-0",502,false,"",257]]}', "malformed outcomes message: ValueError"),
        (  # one small line must not hold up the parent's loop (it counts synchronously)
            b'{"outcomes":[["a","a-0",502,false,"",200],["a","a-1",502,false,"",57]]}',
            "malformed outcomes message: ValueError: more than 256 outcomes in one message",
        ),
        (
            b'{"outcomes":[["a","a-0",502,false,"' + b"x" * 100 + b'",1]]}',
            "malformed outcomes message: ValueError: detail is empty or a failure's name",
        ),
        (b'{"outcomes":[["a","a-0",502,false,7,1]]}', "malformed outcomes message: ValueError"),
        (b'{"outcomes":[["a","a-0",-1,false,"",1]]}', "malformed outcomes message: ValueError"),
        (b'{"ejection":{"pool":"a"}}', "malformed ejection message: KeyError"),
        (
            b'{"ejection":{"pool":"a","endpoint":"e","ejected":1,"since":0,"until":1,'
            b'"ejections":1,"returned_at":null,"reason":""}}',
            "malformed ejection message: TypeError",
        ),
    ],
)
def test_decode_refuses_what_is_not_a_message(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(line)
    text = str(caught.value)
    assert text.startswith(reason) and "\n" not in text


def test_a_hello_needs_one_opened_as_per_listener() -> None:
    """The child pairs each listener with the address it was configured with: a hello whose
    lists differ in length is refused, not zipped short."""
    [hello] = [m for m in messages() if isinstance(m, Hello)]
    line = encode(dataclasses.replace(hello, opened_as=()))
    with pytest.raises(ProtocolError, match="malformed hello message: ValueError: 0 opened_as"):
        decode(line, FROM_PARENT)


@pytest.mark.parametrize("kind", ["hello", "config", "restore", "probe", "ejection", "shutdown"])
def test_the_parent_takes_only_ready_report_and_outcomes_from_a_child(kind: str) -> None:
    """A child's line is never unpickled: the kinds that carry pickles are refused first."""
    with pytest.raises(ProtocolError, match=f"a {kind} message is not expected here"):
        decode(json.dumps({kind: _pickled(object())}).encode(), FROM_CHILD)


@pytest.mark.parametrize("kind", ["ready", "report", "outcomes"])
def test_a_child_takes_none_of_its_own_kinds(kind: str) -> None:
    with pytest.raises(ProtocolError, match=f"a {kind} message is not expected here"):
        decode(json.dumps({kind: []}).encode(), FROM_PARENT)


def test_a_report_with_bad_live_counts_keeps_the_good_ones() -> None:
    """A child's counts are checked, not trusted: bad parts are dropped, never raised."""
    line = b'{"report":{"metrics":{},"live":{"in_flight":{"a/x":"2","a/y":2}},"clients":-1}}'
    assert decode(line) == Report(metrics={}, live={"in_flight": {"a/y": 2}})
