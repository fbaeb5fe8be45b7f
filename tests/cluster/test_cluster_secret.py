"""The __cflb key's sources: configuration, file, environment, random; never logged."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from lb.config.model import Config, EngineSettings
from lb.engine import SECRET_ENV
from lb.engine import Engine as LbEngine


def engine_with(**fields: str) -> LbEngine:
    return LbEngine(Config(engine=dataclasses.replace(EngineSettings(), **fields)))


def key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def test_configuration_then_file_then_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, "from-env")
    secret_file = tmp_path / "cflb.key"
    secret_file.write_text("from-file\n")
    assert engine_with(affinity_secret="inline").secret == key("inline")
    assert engine_with(affinity_secret_file=str(secret_file)).secret == key("from-file")
    assert engine_with().secret == key("from-env")
    monkeypatch.delenv(SECRET_ENV)
    a, b = engine_with().secret, engine_with().secret
    assert a != b and len(a) == 32
