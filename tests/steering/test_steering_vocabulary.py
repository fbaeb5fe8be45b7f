"""The steering vocabularies are enums whose values are the strings traces, JSON and metrics
have always shown: typing them changed no output."""

from __future__ import annotations

import json
import random

from builders import config, load_balancer, pool, request, router

from steering import Affinity, DecisionReason


def test_values_are_the_strings_outputs_show() -> None:
    assert [str(r) for r in DecisionReason] == [
        "policy",
        "affinity",
        "fallback",
        "retry",
        "fixed_response",
        "unknown_host",
        "no_pool",
    ]
    assert [f"{a}" for a in Affinity] == ["none", "new", "hit", "remapped", "expired", "invalid"]


def test_a_decision_shows_plain_strings_in_json_and_traces() -> None:
    r = router(config([pool("a", 3)], load_balancer(["a"], session_affinity="cookie")))
    d = r.decide(request(), random.Random(1), trace=True)
    assert d.reason is DecisionReason.POLICY and d.affinity is Affinity.NEW
    shown = json.loads(json.dumps(d.as_json()))
    assert shown["reason"] == "policy" and shown["affinity"] == "new"
    unknown = r.decide(request(host="nowhere.example"), random.Random(1))
    assert json.loads(json.dumps(unknown.as_json()))["reason"] == "unknown_host"
