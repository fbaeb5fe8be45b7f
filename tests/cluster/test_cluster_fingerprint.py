"""Configuration hashes ignore what is per replica; secret fingerprints do not reveal it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from lb.cluster.fingerprint import config_hash, secret_fingerprint
from lb.config.loader import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "geo.yaml"


def test_engine_and_connect_to_do_not_count_but_pools_do() -> None:
    config = load_config([CONFIG]).config
    other = dataclasses.replace(
        config,
        engine=dataclasses.replace(config.engine, datacenter="SIN"),
        connect_to={"a:1": "b:2"},
    )
    assert config_hash(config) == config_hash(other)
    fewer = dataclasses.replace(config, pools=config.pools[:-1])
    assert config_hash(config) != config_hash(fewer)


def test_the_hash_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = (
        "from lb.cluster.fingerprint import config_hash; from lb.config.loader import load_config;"
        f"print(config_hash(load_config([{str(CONFIG)!r}]).config))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == config_hash(load_config([CONFIG]).config)


def test_secret_fingerprint() -> None:
    assert secret_fingerprint(b"a" * 32) == secret_fingerprint(b"a" * 32)
    assert secret_fingerprint(b"a" * 32) != secret_fingerprint(b"b" * 32)
    assert "61" * 4 not in secret_fingerprint(b"a" * 32)
