"""Fingerprints that replicas compare: the shared configuration and the affinity secret.

Pure.  Replicas of one cluster run "the same file", except for what is theirs alone: the
``engine`` section (listen addresses, vantage point, workers...) and ``connect_to`` (how this
machine reaches endpoints).  :func:`config_hash` hashes everything else, canonically (sorted
keys, sets sorted), so equal configurations give equal hashes in every process, whatever its
hash seed.  :func:`secret_fingerprint` is a keyed digest of the ``__cflb`` secret: equal
secrets give equal fingerprints, and the fingerprint does not reveal the secret.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from lb.config.model import Config

__all__ = ["config_hash", "secret_fingerprint"]

_PER_REPLICA = frozenset({"engine", "connect_to", "source"})


def _canonical(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [_canonical(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((_canonical(v) for v in obj), key=repr)
    if isinstance(obj, enum.Enum):
        return _canonical(obj.value)
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return type(obj).__name__  # compiled helpers: their source text is a field of its own


def config_hash(config: Config) -> str:
    """A short hash of the part of ``config`` every replica must share."""
    shared = {
        f.name: _canonical(getattr(config, f.name))
        for f in dataclasses.fields(config)
        if f.name not in _PER_REPLICA
    }
    text = json.dumps(shared, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def secret_fingerprint(secret: bytes) -> str:
    """A short keyed digest of the affinity secret; never the secret itself."""
    return hmac.new(secret, b"tunnel-lb cluster secret fingerprint", "sha256").hexdigest()[:16]
