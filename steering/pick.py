"""Weighted picks: the few arithmetic primitives every policy is built from.

``bisect`` over precomputed cumulative weights is the fastest pure-Python weighted pick
measured on these machines (~150 ns; ``random.choices(weights=...)`` rebuilds the table every
call and is 8x slower), so tables are built once per snapshot and reused.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect
from collections.abc import Sequence
from random import Random
from typing import TypeVar

__all__ = [
    "RAMP_FLOOR",
    "KeyedDraws",
    "ip_bucket",
    "load_terms",
    "ramp",
    "rendezvous",
    "weighted",
    "weighted_dynamic",
]

T = TypeVar("T")


def weighted(items: Sequence[T], cumulative: Sequence[float], rng: Random) -> T:
    """R19: ``items[i]`` with probability ``w_i / sum(w)``; ``cumulative`` are running sums."""
    i = bisect(cumulative, rng.random() * cumulative[-1])
    # random() < 1 so i < len, except through float rounding at the very top of the range.
    return items[i if i < len(items) else -1]


def weighted_dynamic(items: Sequence[T], weights: Sequence[float], rng: Random) -> T | None:
    """A weighted pick over weights computed per request (R21's ``w / (n + 1)``)."""
    total = 0.0
    for w in weights:
        total += w
    if total <= 0:
        return None
    x = rng.random() * total
    for item, w in zip(items, weights, strict=True):
        x -= w
        if x < 0:
            return item
    return items[-1]


RAMP_FLOOR = 0.1
"""The share of its full weight a recovered endpoint or pool gets at once under ``slow_start``."""


def ramp(now: float, since: float, duration: float) -> float:
    """``slow_start`` (a tunnel-lb extension): the factor on the weight of something that
    recovered at ``since``, rising linearly from :data:`RAMP_FLOOR` to 1 over ``duration``
    seconds.  Never above 1: a ramp only ever holds weight back."""
    if duration <= 0 or now - since >= duration:
        return 1.0
    if now <= since:
        return RAMP_FLOOR
    return RAMP_FLOOR + (1.0 - RAMP_FLOOR) * (now - since) / duration


def load_terms(
    weights: Sequence[float], indexes: Sequence[int], counts: Sequence[int]
) -> list[float]:
    """R21's weights ``w_i / (counts[indexes[i]] + 1)``; an index of -1 (an item never
    counted) reads as a count of 0.

    A ``bisect`` over their running sums (``itertools.accumulate``, which adds them in the
    same order as :func:`weighted_dynamic`) picks ``i`` with probability proportional to
    ``w_i / (n_i + 1)``: the same draw and the same outcome as :func:`weighted_dynamic` over
    them, without its second scan.
    """
    return [w / (counts[i] + 1) if i >= 0 else w for w, i in zip(weights, indexes, strict=True)]


def _unit(key: bytes) -> float:
    """A stable hash of ``key`` mapped into (0, 1): the same on every run and replica."""
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / 18446744073709551617.0  # 2**64 + 1


def rendezvous(key: str, items: Sequence[T], names: Sequence[str], weights: Sequence[float]) -> T:
    """Weighted rendezvous (highest-random-weight) hashing of ``key`` over ``items`` (R20).

    Each item scores ``-w / ln(u)`` with ``u`` a stable hash of (key, item name); the best score
    wins.  The same key and the same set always give the same item, the share of keys follows
    the weights, and removing one item moves only the keys that item held: every other key's
    winner is unchanged because its score did not change.
    """
    best: T = items[0]
    best_score = -1.0
    raw = key.encode()
    for item, name, w in zip(items, names, weights, strict=True):
        score = -w / math.log(_unit(raw + b"\x00" + name.encode()))
        if score > best_score:
            best, best_score = item, score
    return best


def ip_bucket(key: str, salt: str = "") -> float:
    """A stable position of ``key`` in [0, 100), for hash-based load shedding (R24)."""
    return _unit(f"{salt}\x00{key}".encode()) * 100.0


_MASK = (1 << 64) - 1


class KeyedDraws(Random):
    """A stream of draws fixed by ``key``: R38's ip_cookie first choice, the same for every
    request (and every replica) from one client IP.

    ``Random(key)`` does the same, but seeding a Mersenne Twister costs ~5 us per request;
    this is splitmix64 over a blake2b hash of the key (~0.4 us to make, ~0.3 us per draw).
    Only :meth:`random` is provided, which is all the steering picks use.
    """

    def __init__(self, key: str) -> None:  # no Mersenne Twister seeding on purpose
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        self._state = int.from_bytes(digest, "big")

    def random(self) -> float:
        """The next draw in [0, 1)."""
        self._state = z = (self._state + 0x9E3779B97F4A7C15) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return ((z ^ (z >> 31)) >> 11) / 9007199254740992.0  # 2**53

    def getrandbits(self, k: int, /) -> int:
        """Not provided: steering draws with :meth:`random` only."""
        raise NotImplementedError("KeyedDraws provides random() only")
